"""Rolling router-node telemetry records up into period aggregates and quality minutes, exactly once.

`rollup_pending` walks every day bucket that may still hold records (yesterday and older days too, so
records that arrived late or were left by a killed worker are folded into their own period) in batches.
For each batch, the client reads the records (they are immutable: router nodes write them with HSETNX),
computes the integer increments each one adds (`nexus.core.aggregates`), and hands both to one Lua
script that, per record, runs `HDEL` on the raw record and applies its increments only if `HDEL`
returned 1, remembering the id in the day's `rolled` set (router nodes' writes skip ids found there, so
a replay arriving after the rollup is not counted again; see `keys.TELEMETRY_ROLLED_GRACE_SECONDS`).
A batch whose records are all still there (the usual case: no racing worker) goes as one step with its
increments summed per field (`_APPLY_MERGED`: one HINCRBY per field, not per record and field); else
record by record.

Invariants:
- Exactly once: a record is folded in by the script call that deletes it, atomically, so re-running a
  tick, two workers racing over the same day, or a worker killed between (never inside) two batches
  can neither lose a record nor count one twice. Raw records are removed only by being aggregated or
  quarantined.
- One script call touches only `{telemetry}` keys, all declared in KEYS (one Cluster slot).
- A batch is applied whole or not at all: records are validated before the script (`record_problem`:
  not a `TelemetryRecord`, or counters outside their bounds, such as 2^64-1 tokens from an unbounded
  `max_tokens`), and the script checks every increment before its first write. A bad record is moved to
  the quarantine hash (`keys.TELEMETRY_QUARANTINE`, with its reason; the admin API lists it), counted in
  `RollupResult.quarantined`, and the rest of its batch is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregates import (
    QUALITY_WINDOW_SECONDS,
    Aggregate,
    MinuteCounts,
    day_start,
    hour_of,
    hour_start,
    is_key_field,
    parse_aggregate,
    parse_quality_hour,
    quality_increments,
    record_increments,
    record_problem,
)
from nexus.core.config import GLOBAL_SCOPE
from nexus.core.observed import as_text, decode_hash, guard
from nexus.core.periods import BudgetCalendar, day_of
from nexus.core.telemetry_store import TelemetryRecord

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "OnBatch",
    "RollupResult",
    "pending_days",
    "read_aggregate",
    "read_quality_minutes",
    "read_quarantine",
    "repair_live_spend",
    "rollup_day",
    "rollup_pending",
]

log = logging.getLogger("nexus.rollup")

DEFAULT_BATCH_SIZE = 200
_DAY = 86400.0

# KEYS[1]: the day's records hash; KEYS[2]: the day's rolled-up id set; KEYS[3]: the quarantine hash;
# KEYS[4..]: target hashes. ARGV: n records, m expiries, rolled set expire-at, quarantine ttl, now, then m pairs
# (key index, unix expire-at), then per record: id, reason ("" unless quarantined), k ops, then k triples
# (key index, field, integer).
# A script is not atomic on error (what ran before an error stays written), so every increment is checked
# first and a bad one refuses the whole call before any write; the client validates records before this,
# so that refusal is a last line. Returns {applied, quarantined}.
_APPLY = """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local first = 6 + 2 * m
local pos = first
for i = 1, n do
  local k = tonumber(ARGV[pos + 2])
  for j = 0, k - 1 do
    local v = ARGV[pos + 3 + 3 * j + 2]
    if not string.match(v, '^-?%d+$') or #v > 16 then return redis.error_reply('ERR nexus rollup: bad increment') end
  end
  pos = pos + 3 + 3 * k
end
pos = first
local applied, quarantined = 0, 0
for i = 1, n do
  local id, reason, k = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
  local raw = reason ~= '' and redis.call('HGET', KEYS[1], id)
  if redis.call('HDEL', KEYS[1], id) == 1 then
    redis.call('SADD', KEYS[2], id)
    if reason ~= '' then
      quarantined = quarantined + 1
      redis.call('HSET', KEYS[3], id, cjson.encode({reason = reason, record = raw, at = tonumber(ARGV[5])}))
      redis.call('EXPIRE', KEYS[3], ARGV[4])
    else
      applied = applied + 1
      for j = 0, k - 1 do
        local b = pos + 3 * j
        redis.call('HINCRBY', KEYS[tonumber(ARGV[b])], ARGV[b + 1], ARGV[b + 2])
      end
    end
  end
  pos = pos + 3 * k
end
if applied + quarantined > 0 then
  redis.call('EXPIREAT', KEYS[2], ARGV[3])
  for j = 0, m - 1 do
    local b = 6 + 2 * j
    redis.call('EXPIREAT', KEYS[tonumber(ARGV[b])], ARGV[b + 1])
  end
end
return {applied, quarantined}
"""

# The common case, as one step: KEYS as `_APPLY`'s; ARGV: n records, m expiries, rolled set expire-at, then m
# pairs (key index, unix expire-at), then the n ids, then triples (key index, field, integer) of the batch's
# increments summed. Only when every record is still there (no racing worker took one) and none is
# quarantined: then each record's own increments would all be applied, and their sums are the same writes,
# one HINCRBY per field instead of one per record and field. A missing record refuses the call before any
# write (returns {-1}) and the client falls back to `_APPLY`, record by record. Returns {applied}.
_APPLY_MERGED = """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = 4 + 2 * m
local ops = ids + n
for b = ops, #ARGV, 3 do
  local v = ARGV[b + 2]
  if not string.match(v, '^-?%d+$') or #v > 18 then return redis.error_reply('ERR nexus rollup: bad increment') end
end
for i = ids, ops - 1 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then return {-1} end
end
for i = ids, ops - 1 do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('SADD', KEYS[2], ARGV[i])
end
for b = ops, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[b])], ARGV[b + 1], ARGV[b + 2])
end
if n > 0 then
  redis.call('EXPIREAT', KEYS[2], ARGV[3])
  for j = 0, m - 1 do
    local b = 4 + 2 * j
    redis.call('EXPIREAT', KEYS[tonumber(ARGV[b])], ARGV[b + 1])
  end
end
return {n}
"""
_MERGED_MAX = 10**17  # a summed increment beyond this goes record by record (`_APPLY`'s bound per value)

# KEYS[1]: live spend hash; ARGV: ttl, then pairs (scope, floor usd). Raises a scope to its floor.
_REPAIR = """
local out = {}
for i = 2, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) - cur > 1e-6 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

OnBatch = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RollupResult:
    days: tuple[str, ...] = ()  # day buckets that held records
    seen: int = 0  # records read
    applied: int = 0  # records this call folded in (others were taken by a racing worker)
    quarantined: int = 0  # records moved to the quarantine, uncounted (see `record_problem`)
    batches: int = 0


class _Batch:
    """Arguments of one `_APPLY` call: records key, rolled set, quarantine, then each target key once."""

    def __init__(self, day: str, now: float) -> None:
        self.keys = [keys.telemetry_records(day), keys.telemetry_rolled(day), keys.TELEMETRY_QUARANTINE]
        self.rolled_expire_at = int(day_start(day) + _DAY + keys.TELEMETRY_ROLLED_GRACE_SECONDS)
        self.now = now
        self._index: dict[str, int] = {}
        self.expiries: dict[int, int] = {}
        self.records: list[tuple[str, str, list[tuple[int, str, int]]]] = []  # (id, reason or "", ops)

    def target(self, key: str, expire_at: float) -> int:
        idx = self._index.get(key)
        if idx is None:
            self.keys.append(key)
            idx = self._index[key] = len(self.keys)
        self.expiries[idx] = max(self.expiries.get(idx, 0), int(expire_at))
        return idx

    def argv(self) -> list[str | int]:
        out: list[str | int] = [
            len(self.records), len(self.expiries), self.rolled_expire_at, int(keys.TELEMETRY_AGG_TTL_SECONDS),
            repr(self.now),
        ]
        for idx, at in self.expiries.items():
            out += [idx, at]
        for rid, reason, ops in self.records:
            out += [rid, reason, len(ops)]
            for op in ops:
                out += list(op)
        return out

    def merged_argv(self) -> list[str | int] | None:
        """`_APPLY_MERGED`'s arguments, or None when this batch must go record by record (a quarantined
        record, or a sum beyond `_MERGED_MAX`)."""
        sums: dict[tuple[int, str], int] = {}
        for _rid, reason, ops in self.records:
            if reason:
                return None
            for idx, name, n in ops:
                sums[(idx, name)] = sums.get((idx, name), 0) + n
        out: list[str | int] = [len(self.records), len(self.expiries), self.rolled_expire_at]
        for idx, at in self.expiries.items():
            out += [idx, at]
        out += [rid for rid, _, _ in self.records]
        for (idx, name), n in sums.items():
            if n == 0:
                continue
            if abs(n) >= _MERGED_MAX:
                return None
            out += [idx, name, n]
        return out


def _build(
    day: str, items: Iterable[tuple[str, bytes | str]], now: float, calendar: BudgetCalendar
) -> tuple[_Batch, int]:
    batch = _Batch(day, now)
    bad = 0
    for rid, raw in items:
        try:
            rec = TelemetryRecord.model_validate_json(raw)
            problem = record_problem(rec)
        except ValidationError as exc:
            problem = f"not a telemetry record: {exc.errors()[0]['msg']}"
        if problem is not None:
            # kept (quarantined, visible in the admin API), counted, never folded in: one bad record must not
            # stop the rest of its batch or leave the aggregates half-updated
            log.warning("telemetry record %s of %s quarantined: %s", rid, day, problem)
            batch.records.append((rid, problem, []))
            bad += 1
            continue
        expire_at = now + keys.TELEMETRY_AGG_TTL_SECONDS
        agg = batch.target(keys.telemetry_agg(calendar.period(GLOBAL_SCOPE, rec.ts)), expire_at)
        # the key dimension counts in the period of the key's own budget (the same as the global's unless
        # the key budget has its own reset day), so it is that budget's spend
        key_agg = batch.target(keys.telemetry_agg(calendar.period(rec.key, rec.ts)), expire_at) if rec.key else agg
        ops = [(key_agg if is_key_field(name) else agg, name, n) for name, n in record_increments(rec).items()]
        quality = quality_increments(rec, now)
        if quality is not None:
            hour, incs = quality
            try:
                qkey = keys.telemetry_quality(rec.backend, hour)
            except ValueError:  # a backend name no key can hold: count its spend, skip its quality
                qkey = None
            if qkey is not None:
                start = hour_start(hour)
                q = batch.target(qkey, start + keys.TELEMETRY_QUALITY_TTL_SECONDS)
                ops += [(q, name, n) for name, n in incs.items()]
        batch.records.append((rid, "", ops))
    return batch, bad


async def rollup_day(
    redis: Redis,
    day: str,
    *,
    now: float,
    calendar: BudgetCalendar | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: OnBatch | None = None,
) -> RollupResult:
    """Fold every record of day bucket `day` (as found by one HSCAN pass) into the aggregates.
    `on_batch(applied)` runs after each committed batch (progress reporting; tests cancel there)."""
    records_key = keys.telemetry_records(day)
    cursor, seen, applied, quarantined, batches = 0, 0, 0, 0, 0
    while True:
        with guard("scanning telemetry records"):
            cursor, found = await redis.hscan(records_key, cursor, count=batch_size)
        items = [(as_text(k), v) for k, v in found.items()]
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch, _ = _build(day, chunk, now, calendar or BudgetCalendar())
            n, q = await _apply(redis, batch)
            seen, applied, quarantined, batches = seen + len(chunk), applied + n, quarantined + q, batches + 1
            if on_batch is not None:
                await on_batch(n)
        if int(cursor) == 0:
            return RollupResult((day,) if seen else (), seen, applied, quarantined, batches)


async def _apply(redis: Redis, batch: _Batch) -> tuple[int, int]:
    """Fold one batch in: merged when it can be, else (or when a racing worker took some) record by record."""
    with guard("rolling up telemetry"):
        merged = batch.merged_argv()
        if merged is not None:
            reply = await redis.eval(_APPLY_MERGED, len(batch.keys), *batch.keys, *merged)
            if int(reply[0]) >= 0:
                return int(reply[0]), 0
        n, q = (int(x) for x in await redis.eval(_APPLY, len(batch.keys), *batch.keys, *batch.argv()))
    return n, q


def pending_days(now: float) -> list[str]:
    """Day buckets that may hold records, oldest first: back to the records' TTL, plus tomorrow (a router
    node whose clock runs ahead writes there before midnight)."""
    back = int(keys.TELEMETRY_RECORDS_TTL_SECONDS // _DAY) + 1
    return [day_of(now + i * _DAY) for i in range(-back, 2)]


async def rollup_pending(
    redis: Redis,
    now: float,
    *,
    calendar: BudgetCalendar | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: OnBatch | None = None,
) -> RollupResult:
    """Roll up every day bucket that holds records, oldest first."""
    days = pending_days(now)
    with guard("listing telemetry day buckets"):
        async with redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hlen(keys.telemetry_records(day))
            sizes = await pipe.execute()
    total = RollupResult()
    for day, size in zip(days, sizes, strict=True):
        if not size:
            continue
        r = await rollup_day(redis, day, now=now, calendar=calendar, batch_size=batch_size, on_batch=on_batch)
        total = RollupResult(
            total.days + r.days,
            total.seen + r.seen,
            total.applied + r.applied,
            total.quarantined + r.quarantined,
            total.batches + r.batches,
        )
    return total


async def read_quarantine(redis: Redis, limit: int = 100) -> tuple[int, list[dict[str, Any]]]:
    """(how many records are quarantined, up to `limit` of them: id, reason, the raw record, when)."""
    out: list[dict[str, Any]] = []
    with guard("reading quarantined telemetry"):
        total = int(await redis.hlen(keys.TELEMETRY_QUARANTINE))
        cursor = 0
        while len(out) < limit:
            cursor, found = await redis.hscan(keys.TELEMETRY_QUARANTINE, cursor, count=min(limit, 500))
            for rid, raw in found.items():
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    entry = {"reason": "unreadable quarantine entry"}
                out.append({"id": as_text(rid), **(entry if isinstance(entry, dict) else {})})
            if int(cursor) == 0:
                break
    return total, sorted(out[:limit], key=lambda e: e["id"])


async def read_aggregate(redis: Redis, period: str) -> Aggregate:
    with guard("reading spend aggregate"):
        raw = await redis.hgetall(keys.telemetry_agg(period))
    return parse_aggregate(raw)


async def read_quality_minutes(
    redis: Redis, backends: Sequence[str], now: float
) -> dict[str, dict[float, MinuteCounts]]:
    """Per backend, the quality counts of every minute of the last 24 h (and the current hour)."""
    hours = sorted({hour_of(now - h * 3600.0) for h in range(int(QUALITY_WINDOW_SECONDS // 3600) + 1)})
    names = [b for b in backends if b and not any(c.isspace() for c in b)]
    if not names:
        return {}
    with guard("reading quality minutes"):
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                for hour in hours:
                    pipe.hgetall(keys.telemetry_quality(name, hour))
            replies = iter(await pipe.execute())
    out: dict[str, dict[float, MinuteCounts]] = {}
    for name in names:
        minutes: dict[float, MinuteCounts] = {}
        for hour in hours:
            minutes.update(parse_quality_hour(hour, decode_hash(next(replies))))
        out[name] = minutes
    return out


async def repair_live_spend(redis: Redis, period: str, floors: Mapping[str, float]) -> list[str]:
    """Raise the router nodes' live spend counter of `period` to at least `floors[scope]` (the aggregate,
    which can only be ahead after a Redis data loss). Returns the scopes that were raised."""
    if not floors:
        return []
    argv: list[str | int] = [int(keys.TELEMETRY_SPEND_TTL_SECONDS)]
    for scope, usd in floors.items():
        argv += [scope, repr(float(usd))]
    with guard("repairing live spend"):
        raised = await redis.eval(_REPAIR, 1, keys.telemetry_spend(period), *argv)
    return [as_text(s) for s in raised]
