"""Budget reservations: how the hard limit holds across router replicas near the limit.

Far from a hard limit, router nodes count spend after the fact (telemetry, flushed every few tens of
milliseconds) and route from their local view. Near it (less than `reserve_below_percent` of the limit
left, by the node's view), a request to a priced backend first reserves its estimated cost with one
atomic script: admitted only if, for every budget scope that applies, spend + everything reserved + this
estimate stays within the limit. The reservation is released by the same script call that writes the
request's telemetry record (and adds its real cost to the spend), so spend + reserved counts every
request exactly once at every moment.

What this guarantees: once a scope is within its reserve zone, the spend of requests admitted after
that can exceed the limit only by how much their real cost exceeds their estimate (the estimate uses
`max_tokens`, so with `max_tokens` set a completion cannot cost more). Requests admitted before the
zone was reached are bounded by the zone's size as long as the cluster's spend per telemetry flush
window stays below it.

Reservations of a node that dies are removed by the liveness worker when it marks the node gone.
Keys: `{telemetry}:spend:<period>` and `{telemetry}:reserved:<period>` (one slot).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from controlplane import keys
from controlplane.observed import decode_hash, guard

__all__ = ["Reservation", "read_reserved", "release_node", "reserve"]

# KEYS: spend hash, reserved hash. ARGV: node, estimate, scope count, (scope, limit)..., ttl.
# Returns {1} when reserved, or {0, scope, committed} for the first scope it would push past its limit.
_RESERVE = """
local node, est, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[2])
local held = {}
for i = 1, #all, 2 do
  local scope = string.match(all[i], '|([^|]*)$')
  if scope then held[scope] = (held[scope] or 0) + tonumber(all[i + 1]) end
end
for i = 0, n - 1 do
  local scope, limit = ARGV[4 + 2 * i], tonumber(ARGV[5 + 2 * i])
  local committed = tonumber(redis.call('HGET', KEYS[1], scope) or '0') + (held[scope] or 0)
  if committed + est > limit then return {0, scope, tostring(committed)} end
end
for i = 0, n - 1 do
  redis.call('HINCRBYFLOAT', KEYS[2], node .. '|' .. ARGV[4 + 2 * i], ARGV[2])
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4 + 2 * n]))
return {1}
"""

_RELEASE_NODE = """
local all = redis.call('HKEYS', KEYS[1])
local prefix = ARGV[1] .. '|'
local n = 0
for _, field in ipairs(all) do
  if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], field); n = n + 1 end
end
return n
"""


class Reservation:
    """The outcome of `reserve`: `ok`, or the scope that had no room and what it had committed."""

    __slots__ = ("committed", "ok", "scope")

    def __init__(self, ok: bool, scope: str = "", committed: float = 0.0) -> None:
        self.ok = ok
        self.scope = scope
        self.committed = committed


async def reserve(
    redis: Redis, period: str, node: str, estimate: float, limits: Sequence[tuple[str, float]]
) -> Reservation:
    argv: list[str | int] = [node, repr(float(estimate)), len(limits)]
    for scope, limit in limits:
        argv.extend((scope, repr(float(limit))))
    argv.append(int(keys.TELEMETRY_SPEND_TTL_SECONDS))
    with guard("reserving budget"):
        reply = await redis.eval(_RESERVE, 2, keys.telemetry_spend(period), keys.telemetry_reserved(period), *argv)
    if int(reply[0]) == 1:
        return Reservation(True)
    scope = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    return Reservation(False, scope, float(reply[2]))


async def read_reserved(redis: Redis, period: str) -> dict[str, float]:
    """USD reserved per budget scope, summed over nodes."""
    with guard("reading reservations"):
        reply = await redis.hgetall(keys.telemetry_reserved(period))
    totals: dict[str, float] = {}
    for field, raw in decode_hash(reply).items():
        _, sep, scope = field.rpartition("|")
        if sep:
            totals[scope] = totals.get(scope, 0.0) + float(raw)
    return totals


async def release_node(redis: Redis, periods: Sequence[str], node: str) -> int:
    """Drop every reservation of `node` (it is gone: its requests will never be recorded)."""
    n = 0
    with guard("releasing a gone node's reservations"):
        for period in periods:
            n += int(await redis.eval(_RELEASE_NODE, 1, keys.telemetry_reserved(period), node))
    return n
