"""Telemetry and router-node liveness in Redis: batches of summed records, live period spend, heartbeats.

A router node's flush sums its buffered records (`nexus.core.batching`) and applies the sums with one Lua
script call per batch: the period aggregates and quality minutes (HINCRBY), the live spend of each budget
scope in the scope's own period (HINCRBYFLOAT), the budget leases the requests release, the quarantine of
records outside the counters' bounds. Exactly once per batch: the script keeps each writer's last applied
batch number (`keys.telemetry_writer`) and skips a batch at or below it, so a batch replayed after a lost
reply (or a Redis restart with AOF) never counts twice; writers send their batches in order, one at a time.

Invariants:
- Each target comes from the record's own timestamp and the scope's period rule (`nexus.core.periods`), so a
  replay lands in the same keys as the first attempt.
- Spend is kept per scope: `global` for every record, plus the record's API key id (and its team) when it has
  one; each scope in the `spend:<period>` hash of its own period. A batch adds its cost to spend and releases
  its reservations in the same step, so spend + reserved never counts a request twice or loses it in between.
- A script call checks every increment and amount before its first write (a script is not atomic on error,
  and a batch that failed half-way would be marked applied).
- One script call touches only `{telemetry}` keys (one Cluster slot).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.batching import BatchWrite, TelemetryBatch, batch_write
from nexus.core.observed import decode_hash, dump_model, guard, load_json
from nexus.core.periods import BudgetCalendar
from nexus.core.telemetry_records import Outcome, TelemetryRecord, record_scopes

__all__ = [
    "NodeHeartbeat",
    "Outcome",
    "TelemetryBatch",
    "TelemetryRecord",
    "Written",
    "read_heartbeats",
    "read_live_spend",
    "record_scopes",
    "write_batch",
    "write_batch_replicated",
    "write_heartbeat",
]

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


# KEYS[1]: the writer's last applied batch number; KEYS[2]: the quarantine hash; KEYS[3..]: targets.
# ARGV: seq, writer-mark ttl, then counts c, spends s, releases r, quarantined q, expiries e; then c triples
# (key index, field, integer) for HINCRBY, s triples (key index, scope, USD) for HINCRBYFLOAT, r triples (key
# index, lease field, USD to release), q pairs (record id, entry JSON), e pairs (key index, unix expire-at).
# Returns 1 when applied, 0 for a replay (nothing written).
_WRITE = """
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last >= seq then return 0 end
local c, s, r, q, e = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local p = 8
for i = 0, c - 1 do
  local v = ARGV[p + 3 * i + 2]
  if not string.match(v, '^-?%d+$') or #v > 18 then return redis.error_reply('ERR nexus telemetry: bad increment') end
end
for i = c, c + s + r - 1 do
  local v = tonumber(ARGV[p + 3 * i + 2])
  if v == nil or v ~= v or v == math.huge or v == -math.huge then
    return redis.error_reply('ERR nexus telemetry: bad amount')
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 1, c do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[p])], ARGV[p + 1], ARGV[p + 2])
  p = p + 3
end
for i = 1, s do
  redis.call('HINCRBYFLOAT', KEYS[tonumber(ARGV[p])], ARGV[p + 1], ARGV[p + 2])
  p = p + 3
end
for i = 1, r do
  local k, f = KEYS[tonumber(ARGV[p])], ARGV[p + 1]
  if tonumber(redis.call('HINCRBYFLOAT', k, f, '-' .. ARGV[p + 2])) < 1e-9 then redis.call('HDEL', k, f) end
  p = p + 3
end
for i = 1, q do
  redis.call('HSET', KEYS[2], ARGV[p], ARGV[p + 1])
  p = p + 2
end
for i = 1, e do
  redis.call('EXPIREAT', KEYS[tonumber(ARGV[p])], ARGV[p + 1])
  p = p + 2
end
return 1
"""


def _args(batch: TelemetryBatch, calendar: BudgetCalendar | None) -> tuple[BatchWrite, list[str | bytes | int]]:
    w = batch_write(batch, calendar)
    argv: list[str | bytes | int] = [
        batch.seq, int(keys.TELEMETRY_WRITER_TTL_SECONDS),
        len(w.counts), len(w.spend), len(w.releases), len(w.quarantine), len(w.expiries),
    ]
    for (idx, name), n in w.counts.items():
        argv += (idx, name, n)
    for (idx, scope), usd in w.spend.items():
        argv += (idx, scope, repr(float(usd)))
    for (idx, name), usd in w.releases.items():
        argv += (idx, name, repr(float(usd)))
    for rid, _why, entry in w.quarantine:
        argv += (rid, entry)
    for idx, at in w.expiries.items():
        argv += (idx, at)
    return w, argv


@dataclass(frozen=True, slots=True)
class Written:
    """What a batch's write did: applied (False: a replay, nothing written) and the records it quarantined
    (id, reason) when applied."""

    applied: bool
    quarantined: tuple[tuple[str, str], ...] = ()


def _written(applied: object, w: BatchWrite) -> Written:
    if not int(applied):
        return Written(False)
    return Written(True, tuple((rid, why) for rid, why, _ in w.quarantine))


async def write_batch(redis: Redis, batch: TelemetryBatch, calendar: BudgetCalendar | None = None) -> Written:
    """Apply a batch once (a replay writes nothing). Each scope's spend goes to the period its rule in
    `calendar` gives the record's own timestamp."""
    w, argv = _args(batch, calendar)
    with guard("writing telemetry"):
        return _written(await redis.eval(_WRITE, len(w.keys), *w.keys, *argv), w)


async def write_batch_replicated(
    redis: Redis, batch: TelemetryBatch, calendar: BudgetCalendar | None, replicas: int, timeout_ms: int
) -> tuple[Written, int]:
    """`write_batch`, then Redis WAIT on the same connection: (applied, replicas that hold the write). Fewer
    replicas than asked means a primary failover right now could lose this batch."""
    w, argv = _args(batch, calendar)
    with guard("writing telemetry"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.eval(_WRITE, len(w.keys), *w.keys, *argv)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            applied, acked = await pipe.execute()
    return _written(applied, w), int(acked)


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
