"""Reading the telemetry aggregates that router nodes' batches write (`nexus.core.telemetry_store`): a
period's aggregate, backends' quality minutes, the quarantine; and raising live spend to the aggregate.

The budget worker observes budgets from the aggregates and repairs live spend from them after a Redis data
loss (live spend can only be behind an aggregate then: both are written by the same batch script).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregates import (
    QUALITY_WINDOW_SECONDS,
    Aggregate,
    MinuteCounts,
    hour_of,
    parse_aggregate,
    parse_quality_hour,
)
from nexus.core.observed import as_text, decode_hash, guard

__all__ = ["read_aggregate", "read_quality_minutes", "read_quarantine", "repair_live_spend"]

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
