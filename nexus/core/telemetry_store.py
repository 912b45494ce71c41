"""Telemetry and router-node liveness in Redis: per-request records, live period spend, heartbeats.

Router nodes write records in batches through one Lua script. The script stores each record with
HSETNX under its request id and adds its cost to the period's live spend only when the record is new,
so a batch replayed after a lost reply (or a Redis restart with AOF) never counts a cost twice.
Workers roll records up into aggregates and delete them (`nexus.core.rollup`), remembering the ids
in the day's `rolled` set; the script treats an id found there as not new either, so a replay that
arrives after the rollup is not counted again.

Invariants:
- A record's day bucket and each scope's spend period come from its own timestamp and the scope's period
  rule (`nexus.core.periods`), so a replay lands in the same keys as the first attempt.
- Spend is kept per scope: `global` for every record, plus the record's API key id when it has one; each
  scope in the `spend:<period>` hash of its own period.
- One script call touches only `{telemetry}` keys (one Cluster slot).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import GLOBAL_SCOPE
from nexus.core.observed import decode_hash, dump_model, guard, load_json
from nexus.core.periods import BudgetCalendar, day_of
from nexus.core.tenancy import team_scope

__all__ = [
    "NodeHeartbeat",
    "Outcome",
    "TelemetryRecord",
    "read_heartbeats",
    "read_live_spend",
    "record_scopes",
    "write_heartbeat",
    "write_records",
    "write_records_replicated",
]

class Outcome:
    """A record's `outcome`: how the request (or one failed attempt of it) ended."""

    OK = "ok"  # answered 200 (a stream: to its end)
    UPSTREAM_ERROR = "upstream_error"  # an attempt failed before the first byte (the `<id>:<n>` records)
    MIDSTREAM_ERROR = "midstream_error"  # a stream the upstream broke off after it started
    CLIENT_DISCONNECTED = "client_disconnected"  # the client left before the answer was complete

    @staticmethod
    def http(status: int) -> str:
        """A backend's non-200 answer, relayed to the client as it was."""
        return f"http_{status}"


class TelemetryRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    ts: float
    node: str
    backend: str
    backend_type: str = ""
    model: str
    requested_model: str = ""
    key: str | None = None
    team: str | None = None  # the key's team (nexus.core.tenancy): its spend counts under `team:<name>` too
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    outcome: str = Outcome.OK
    status: int = 200
    stream: bool = False
    fallback_model: str | None = None
    retries: int = 0
    # USD this request took from budget leases near a hard limit (0: none), and per scope the period whose
    # leases it took from (a scope's period is its own: see nexus.core.periods)
    reserved_usd: float = 0.0
    reserved_periods: dict[str, str] = Field(default_factory=dict)
    # a stream the upstream cut off before reporting usage: billed for the prompt plus the tokens delivered
    partial: bool = False


class NodeHeartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    node: str
    at: float
    started_at: float
    snapshot_version: int = 0
    snapshot_built_at: float | None = None
    observed_at: float | None = None  # newest health observation the node's snapshot holds
    inflight: int = 0
    queue_depth: int = 0
    telemetry_buffered: int = 0
    redis_ok: bool = True
    draining: bool = False
    # the newest desired state could not be built: the node routes on `snapshot_version`, not this one
    snapshot_error: str | None = None
    failing_version: int | None = None
    state_lost: str | None = None  # Redis lost the shared state; the node routes on its snapshot, restoring
    # Set by the liveness worker when the node stopped heart-beating; a live node never writes it, so
    # its next heartbeat clears it.
    gone: bool = False


# KEYS: every key the batch touches, once. ARGV: count, records ttl, spend ttl, then per record: id, json,
# cost, reserved USD, node, index of its day hash, index of its day's rolled-up id set, scope count, then per
# scope: name, index of the spend hash of the scope's period, index of the leases hash it reserved in (0:
# none). A new record adds its cost to every scope's spend and releases its reservation in the same step,
# so spend + reserved never counts a request twice or loses it in between.
_WRITE = """
local n = tonumber(ARGV[1])
local rttl, sttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local added, r = 0, 4
local function release(rk, field, amount)
  local left = tonumber(redis.call('HINCRBYFLOAT', rk, field, -amount))
  if left < 1e-9 then redis.call('HDEL', rk, field) end
end
for i = 1, n do
  local id, cost, reserved, node = ARGV[r], ARGV[r + 2], tonumber(ARGV[r + 3]), ARGV[r + 4]
  local rk, done = KEYS[tonumber(ARGV[r + 5])], KEYS[tonumber(ARGV[r + 6])]
  local first, after = r + 8, r + 8 + 3 * tonumber(ARGV[r + 7])
  if redis.call('SISMEMBER', done, id) == 0 and redis.call('HSETNX', rk, id, ARGV[r + 1]) == 1 then
    added = added + 1
    redis.call('EXPIRE', rk, rttl)
    for j = first, after - 1, 3 do
      if tonumber(cost) > 0 then
        local sk = KEYS[tonumber(ARGV[j + 1])]
        redis.call('HINCRBYFLOAT', sk, ARGV[j], cost)
        redis.call('EXPIRE', sk, sttl)
      end
      local res = tonumber(ARGV[j + 2])
      if reserved > 0 and res > 0 then release(KEYS[res], node .. '|' .. ARGV[j], reserved) end
    end
  end
  r = after
end
return added
"""


def record_scopes(rec: TelemetryRecord) -> tuple[str, ...]:
    """The budget scopes a record's cost counts under: `global`, its API key id when it has one, and its
    key's team (`team:<name>`) when that has one."""
    if not rec.key:
        return (GLOBAL_SCOPE,)
    return (GLOBAL_SCOPE, rec.key, team_scope(rec.team)) if rec.team else (GLOBAL_SCOPE, rec.key)


class _Keys:
    """KEYS of one script call, each key once (1-based indices, as Lua sees them)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        idx = self._index.get(key)
        if idx is None:
            self.keys.append(key)
            idx = self._index[key] = len(self.keys)
        return idx


def _write_args(
    records: Sequence[TelemetryRecord], calendar: BudgetCalendar | None
) -> tuple[list[str], list[str | bytes | int]]:
    cal = calendar or BudgetCalendar()
    index = _Keys()
    argv: list[str | bytes | int] = [
        len(records),
        int(keys.TELEMETRY_RECORDS_TTL_SECONDS),
        int(keys.TELEMETRY_SPEND_TTL_SECONDS),
    ]
    for rec in records:
        day = day_of(rec.ts)
        scopes = record_scopes(rec)
        argv.extend(
            (
                rec.id, dump_model(rec), repr(float(rec.cost_usd)), repr(float(rec.reserved_usd)), rec.node,
                index(keys.telemetry_records(day)), index(keys.telemetry_rolled(day)), len(scopes),
            )
        )
        for scope in scopes:
            leased = rec.reserved_periods.get(scope) if rec.reserved_usd > 0 else None
            argv.extend(
                (
                    scope,
                    index(keys.telemetry_spend(cal.period(scope, rec.ts))),
                    index(keys.telemetry_reserved(leased)) if leased else 0,
                )
            )
    return index.keys, argv


async def write_records(
    redis: Redis, records: Sequence[TelemetryRecord], calendar: BudgetCalendar | None = None
) -> int:
    """Store a batch; returns how many were new. Safe to repeat with the same records. Each scope's spend
    goes to the period its rule in `calendar` gives the record's own timestamp."""
    if not records:
        return 0
    key_list, argv = _write_args(records, calendar)
    with guard("writing telemetry"):
        return int(await redis.eval(_WRITE, len(key_list), *key_list, *argv))


async def write_records_replicated(
    redis: Redis, records: Sequence[TelemetryRecord], calendar: BudgetCalendar | None, replicas: int, timeout_ms: int
) -> tuple[int, int]:
    """`write_records`, then Redis WAIT on the same connection: (new records, replicas that hold the write).
    Fewer replicas than asked means a primary failover right now could lose this batch."""
    key_list, argv = _write_args(records, calendar)
    with guard("writing telemetry"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.eval(_WRITE, len(key_list), *key_list, *argv)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            added, acked = await pipe.execute()
    return int(added), int(acked)


async def read_live_spend(redis: Redis, period: str) -> dict[str, float]:
    with guard("reading live spend"):
        reply = await redis.hgetall(keys.telemetry_spend(period))
    return {scope: float(raw) for scope, raw in decode_hash(reply).items()}


async def write_heartbeat(redis: Redis, beat: NodeHeartbeat) -> None:
    with guard("writing heartbeat"):
        await redis.hset(keys.NODES_HEARTBEATS, beat.node, dump_model(beat))


async def read_heartbeats(redis: Redis) -> list[NodeHeartbeat]:
    where = keys.NODES_HEARTBEATS
    with guard("reading heartbeats"):
        reply = await redis.hgetall(where)
    beats = [load_json(raw, f"{where}[{n}]", NodeHeartbeat.model_validate) for n, raw in decode_hash(reply).items()]
    return sorted(beats, key=lambda b: b.node)
