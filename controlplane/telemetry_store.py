"""Telemetry and router-node liveness in Redis: per-request records, live period spend, heartbeats.

Router nodes write records in batches through one Lua script. The script stores each record with
HSETNX under its request id and adds its cost to the period's live spend only when the record is new,
so a batch replayed after a lost reply (or a Redis restart with AOF) never counts a cost twice.
Workers roll records up into aggregates and delete them (`controlplane.rollup`), remembering the ids
in the day's `rolled` set; the script treats an id found there as not new either, so a replay that
arrives after the rollup is not counted again.

Invariants:
- A record's day bucket and spend period come from its own timestamp (`controlplane.periods`), so a
  replay lands in the same keys as the first attempt.
- Spend is kept per scope: `global` for every record, plus the record's API key id when it has one.
- One script call touches only `{telemetry}` keys (one Cluster slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from controlplane import keys
from controlplane.observed import decode_hash, dump_model, guard, load_json
from controlplane.periods import day_of, period_of
from controlplane.snapshot import GLOBAL_SCOPE

__all__ = [
    "NodeHeartbeat",
    "TelemetryRecord",
    "read_heartbeats",
    "read_live_spend",
    "read_records",
    "write_heartbeat",
    "write_records",
]

Outcome = Literal["ok", "upstream_error", "midstream_error", "client_disconnected", "http_error"]


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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    outcome: str = "ok"
    status: int = 200
    stream: bool = False
    fallback_model: str | None = None
    retries: int = 0
    # USD this request reserved near a hard limit (0: none), and the period it reserved in
    reserved_usd: float = 0.0
    reserved_period: str = ""


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
    # Set by the liveness worker when the node stopped heart-beating; a live node never writes it, so
    # its next heartbeat clears it.
    gone: bool = False


# KEYS: per record its day hash, its period spend hash, its day's rolled-up id set, its period's
# reservations hash. ARGV: count, records ttl, spend ttl, then per record: id, json, cost, key scope ("" for
# none), reserved USD, node. A new record adds its cost to the spend and releases its reservation in the
# same step, so spend + reserved never counts a request twice or loses it in between.
_WRITE = (
    """
local n = tonumber(ARGV[1])
local rttl, sttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local added = 0
local function release(rk, field, amount)
  local left = tonumber(redis.call('HINCRBYFLOAT', rk, field, -amount))
  if left < 1e-9 then redis.call('HDEL', rk, field) end
end
for i = 1, n do
  local rk, sk, done, res = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local b = 3 + (i - 1) * 6
  if redis.call('SISMEMBER', done, ARGV[b + 1]) == 0 and redis.call('HSETNX', rk, ARGV[b + 1], ARGV[b + 2]) == 1 then
    added = added + 1
    redis.call('EXPIRE', rk, rttl)
    local cost = tonumber(ARGV[b + 3])
    if cost > 0 then
      redis.call('HINCRBYFLOAT', sk, '"""
    + GLOBAL_SCOPE
    + """', ARGV[b + 3])
      if ARGV[b + 4] ~= '' then redis.call('HINCRBYFLOAT', sk, ARGV[b + 4], ARGV[b + 3]) end
      redis.call('EXPIRE', sk, sttl)
    end
    local reserved = tonumber(ARGV[b + 5])
    if reserved > 0 then
      release(res, ARGV[b + 6] .. '|"""
    + GLOBAL_SCOPE
    + """', reserved)
      if ARGV[b + 4] ~= '' then release(res, ARGV[b + 6] .. '|' .. ARGV[b + 4], reserved) end
    end
  end
end
return added
"""
)


async def write_records(redis: Redis, records: Sequence[TelemetryRecord], reset_day: int = 1) -> int:
    """Store a batch; returns how many were new. Safe to repeat with the same records."""
    if not records:
        return 0
    key_list: list[str] = []
    argv: list[str | bytes | int] = [
        len(records),
        int(keys.TELEMETRY_RECORDS_TTL_SECONDS),
        int(keys.TELEMETRY_SPEND_TTL_SECONDS),
    ]
    for rec in records:
        day = day_of(rec.ts)
        period = period_of(rec.ts, reset_day)
        key_list.append(keys.telemetry_records(day))
        key_list.append(keys.telemetry_spend(period))
        key_list.append(keys.telemetry_rolled(day))
        key_list.append(keys.telemetry_reserved(rec.reserved_period or period))
        argv.extend(
            (rec.id, dump_model(rec), repr(float(rec.cost_usd)), rec.key or "", repr(float(rec.reserved_usd)), rec.node)
        )
    with guard("writing telemetry"):
        return int(await redis.eval(_WRITE, len(key_list), *key_list, *argv))


async def read_live_spend(redis: Redis, period: str) -> dict[str, float]:
    with guard("reading live spend"):
        reply = await redis.hgetall(keys.telemetry_spend(period))
    return {scope: float(raw) for scope, raw in decode_hash(reply).items()}


async def read_records(redis: Redis, day: str) -> list[TelemetryRecord]:
    where = keys.telemetry_records(day)
    with guard("reading telemetry records"):
        reply = await redis.hgetall(where)
    return [
        load_json(raw, f"{where}[{rid}]", TelemetryRecord.model_validate) for rid, raw in decode_hash(reply).items()
    ]


async def write_heartbeat(redis: Redis, beat: NodeHeartbeat) -> None:
    with guard("writing heartbeat"):
        await redis.hset(keys.NODES_HEARTBEATS, beat.node, dump_model(beat))


async def read_heartbeats(redis: Redis) -> list[NodeHeartbeat]:
    where = keys.NODES_HEARTBEATS
    with guard("reading heartbeats"):
        reply = await redis.hgetall(where)
    beats = [load_json(raw, f"{where}[{n}]", NodeHeartbeat.model_validate) for n, raw in decode_hash(reply).items()]
    return sorted(beats, key=lambda b: b.node)
