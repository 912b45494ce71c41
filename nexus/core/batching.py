"""A flush interval's telemetry records summed into the writes of one batch (pure: no I/O, clock given).

A router node does not store its requests' records in Redis: each flush sums them per target (the period
aggregates, the quality minutes, the live spend of each budget scope, the budget leases they release) and
`nexus.core.telemetry_store.write_batch` applies the sums in one script call, exactly once per batch (see
`TelemetryBatch`). So the Redis work of a flush grows with the distinct backends, models, keys and minutes
it saw, not with its requests. Per-request detail is the request log's (`nexus.request`), not Redis's.

Invariants:
- The sums equal what the records would add one by one: each record's aggregate fields
  (`nexus.core.aggregates.record_increments`; summed per group before fields are named, key fields in the key
  budget's own period), its quality minute, its cost under every scope of `record_scopes` in the scope's own
  period, its lease amounts released.
- A record outside the counters' bounds (`record_problem`) is not summed into aggregates or quality: it goes
  to the quarantine with its reason. Its cost still counts as spend when it is a finite amount, at most
  `MAX_RECORD_USD` (a budget must not miss spending because a backend reported nonsense), and its reservation
  is released.
- Every key the batch touches is listed once (`BatchWrite.keys`, 1-based indices as Lua sees them) and gets
  an absolute expiry (the latest any of its writes asks for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

from nexus.core import keys
from nexus.core.aggregates import (
    MAX_RECORD_USD,
    QUALITY_WINDOW_SECONDS,
    aggregate_fields,
    hour_of,
    hour_start,
    is_key_field,
    minute_of,
    quality_metrics,
    record_dimensions,
    record_metrics,
    record_problem,
)
from nexus.core.config import GLOBAL_SCOPE
from nexus.core.observed import dump_model
from nexus.core.periods import BudgetCalendar
from nexus.core.telemetry_records import TelemetryRecord, record_scopes

__all__ = ["BatchWrite", "TelemetryBatch", "batch_write"]


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    """One flush's records, applied exactly once. `writer` names this process's telemetry buffer (the node id
    and a random part, new with every start); `seq` grows by one per batch of that writer, and a writer sends
    batch `seq + 1` only after `seq` was confirmed, so Redis keeps one number per writer (its last applied
    batch) and a replay (a lost reply, a retry after an outage) is recognised by `seq <= last`."""

    writer: str
    seq: int
    records: tuple[TelemetryRecord, ...]
    at: float  # when the batch was formed (node clock): quality windows and quarantine times are judged by it


@dataclass(slots=True)
class BatchWrite:
    """The keys and summed writes of one batch; `nexus.core.telemetry_store` turns them into script args."""

    keys: list[str] = field(default_factory=list)
    counts: dict[tuple[int, str], int] = field(default_factory=dict)  # HINCRBY: aggregates, quality minutes
    spend: dict[tuple[int, str], float] = field(default_factory=dict)  # HINCRBYFLOAT: live spend per scope
    releases: dict[tuple[int, str], float] = field(default_factory=dict)  # lease field -> USD to release
    quarantine: list[tuple[str, str, bytes]] = field(default_factory=list)  # (record id, reason, entry JSON)
    expiries: dict[int, int] = field(default_factory=dict)  # key index -> unix expire-at
    _index: dict[str, int] = field(default_factory=dict)

    def target(self, key: str, expire_at: float | None) -> int:
        idx = self._index.get(key)
        if idx is None:
            self.keys.append(key)
            idx = self._index[key] = len(self.keys)
        if expire_at is not None:
            self.expiries[idx] = max(self.expiries.get(idx, 0), int(expire_at))
        return idx


def _add(into: dict, where: tuple[int, str], amount: float) -> None:
    into[where] = into.get(where, 0) + amount


class _Sums:
    """One batch's records grouped before any field name is built: aggregate metrics per (aggregate keys,
    dimensions), quality metrics per (quality key, minute); periods and minutes computed once per second of
    timestamps (they depend on the floored second only: `nexus.core.periods`). Integer sums are exact, so the
    fields equal the records' one by one."""

    def __init__(self, out: BatchWrite, now: float, calendar: BudgetCalendar) -> None:
        self.out, self.now, self.calendar = out, now, calendar
        self.periods: dict[tuple[str, int], str] = {}
        self.agg_keys: dict[str, str] = {}  # period -> its aggregate's key
        self.minutes: dict[int, tuple[str, str, float]] = {}  # second -> (hour, minute, quality expire-at)
        self.aggregates: dict[tuple[int, int, tuple], dict[str, int]] = {}
        self.quality: dict[tuple[int, str], dict[str, int]] = {}

    def period(self, scope: str, ts: float) -> str:
        key = (scope, math.floor(ts))
        name = self.periods.get(key)
        if name is None:
            name = self.periods[key] = self.calendar.period(scope, ts)
        return name

    def agg_key(self, scope: str, ts: float) -> str:
        period = self.period(scope, ts)
        key = self.agg_keys.get(period)
        if key is None:
            key = self.agg_keys[period] = keys.telemetry_agg(period)
        return key

    def add(self, rec: TelemetryRecord) -> None:
        """Aggregate metrics and the quality minute of one countable record."""
        expire_at = self.now + keys.TELEMETRY_AGG_TTL_SECONDS
        agg = self.out.target(self.agg_key(GLOBAL_SCOPE, rec.ts), expire_at)
        # the key dimension counts in the period of the key's own budget (the global's unless it has its own
        # reset day)
        key_agg = self.out.target(self.agg_key(rec.key, rec.ts), expire_at) if rec.key else agg
        _merge(self.aggregates.setdefault((agg, key_agg, record_dimensions(rec)), {}), record_metrics(rec))
        if rec.ts < self.now - QUALITY_WINDOW_SECONDS:
            return
        second = math.floor(rec.ts)
        when = self.minutes.get(second)
        if when is None:
            hour = hour_of(rec.ts)
            expire = hour_start(hour) + keys.TELEMETRY_QUALITY_TTL_SECONDS
            when = self.minutes[second] = (hour, minute_of(rec.ts), expire)
        try:
            qkey = keys.telemetry_quality(rec.backend, when[0])
        except ValueError:  # a backend name no key can hold: its spend counts, its quality is skipped
            return
        _merge(self.quality.setdefault((self.out.target(qkey, when[2]), when[1]), {}), quality_metrics(rec))

    def fields(self) -> None:
        """The grouped sums as the batch's HINCRBY fields."""
        counts = self.out.counts
        for (agg, key_agg, dims), metrics in self.aggregates.items():
            for name, n in aggregate_fields(dims, metrics).items():
                _add(counts, (key_agg if is_key_field(name) else agg, name), n)
        for (q, minute), metrics in self.quality.items():
            for name, n in metrics.items():
                _add(counts, (q, f"{minute}.{name}"), n)


def _merge(into: dict[str, int], amounts: dict[str, int]) -> None:
    for name, n in amounts.items():
        into[name] = into.get(name, 0) + n


def _spend(out: BatchWrite, rec: TelemetryRecord, sums: _Sums) -> None:
    """The record's cost under each budget scope, and the lease amounts it releases."""
    # at most MAX_RECORD_USD a record: a broken backend's or price's absurd figure is charged at that bound, and
    # a batch's sums stay finite (a script that fails half-way cannot be redone: its batch is marked applied)
    cost = min(rec.cost_usd, MAX_RECORD_USD) if math.isfinite(rec.cost_usd) and rec.cost_usd > 0 else 0.0
    spend_expire = rec.ts + keys.TELEMETRY_SPEND_TTL_SECONDS
    for scope in record_scopes(rec):
        if cost > 0:
            spend = out.target(keys.telemetry_spend(sums.period(scope, rec.ts)), spend_expire)
            _add(out.spend, (spend, scope), cost)
        leased = rec.reserved_periods.get(scope) if math.isfinite(rec.reserved_usd) and rec.reserved_usd > 0 else None
        if leased:
            _add(out.releases, (out.target(keys.telemetry_reserved(leased), None), f"{rec.node}|{scope}"),
                 rec.reserved_usd)


def batch_write(batch: TelemetryBatch, calendar: BudgetCalendar | None = None) -> BatchWrite:
    """Everything `batch` writes, summed per target."""
    cal = calendar or BudgetCalendar()
    out = BatchWrite()
    out.target(keys.telemetry_writer(batch.writer), None)  # KEYS[1]: the writer's last applied batch
    out.target(keys.TELEMETRY_QUARANTINE, None)  # KEYS[2]
    sums = _Sums(out, batch.at, cal)
    for rec in batch.records:
        problem = record_problem(rec)
        if problem is None:
            sums.add(rec)
        else:
            entry = {"reason": problem, "record": dump_model(rec).decode(), "at": batch.at}
            out.quarantine.append((rec.id, problem, orjson.dumps(entry)))
        _spend(out, rec, sums)
    sums.fields()
    if out.quarantine:
        out.expiries[2] = int(batch.at + keys.TELEMETRY_AGG_TTL_SECONDS)
    out.counts = {k: n for k, n in out.counts.items() if n}
    return out
