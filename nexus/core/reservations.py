"""Budget leases: how a blocking hard limit holds exactly across router replicas.

A budget with `hard_limit_action` `block_cloud` or `block_all` is spent through leases. A router node
admits a request to a priced backend only against budget it holds a lease on; when its lease runs short
it asks Redis for more with one atomic script, which grants only what keeps

    spend + every node's outstanding lease  <=  limit          (per scope: global, and the API key's)

Each admitted request takes its estimated cost out of the node's lease; its telemetry record carries that
amount, and the script that writes the record (and adds its real cost to the spend) gives the amount back
from the node's lease in Redis in the same step. So spend + outstanding leases never counts a request twice
or loses it, and spend can pass the limit only by how much requests cost more than their estimate (with
`max_tokens` set, a completion cannot).

Leases are sized to need: a small share of the limit, shrinking as the budget runs out, so far from the
limit a node asks Redis once per many requests and near it about once per request. Unused lease goes back
when idle, and all of it when the node stops gracefully.

A node that dies (SIGKILL, a crash) leaves requests it admitted but never recorded: in flight, or recorded
in its unflushed buffer. Each node reports that amount on every telemetry flush (`report_admitted`), and
`settle_node` (run by the liveness worker when it marks the node gone, and by a node starting under the same
id, which reclaims what its id still holds) charges it to the period's spend as "unreconciled" (kept apart
for the spend report) and drops the node's leases. Budgets therefore do not under-count a crash, except for
requests admitted after the node's last flush (one flush interval); a lease never outlives its node.
Keys: `{telemetry}:spend:<period>` and `{telemetry}:reserved:<period>` (one slot), fields "<node>|<scope>";
each scope counts in the hashes of its own period (`nexus.core.periods`), so a lease of a period that
ended never holds back the next one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.observed import decode_hash, guard

__all__ = [
    "Grant",
    "read_reserved",
    "read_unreconciled",
    "report_admitted",
    "reserve",
    "return_lease",
    "settle_node",
]

# KEYS: per scope, the spend hash and the leases hash of the scope's own period. ARGV: node, wanted, needed,
# scope count, (scope, limit)..., ttl. Grants min(wanted, room) where room is the smallest
# (limit - spend - all leases) over the scopes; refuses when that is below `needed`. Returns {granted} or
# {0, scope, committed}.
_GRANT = """
local node, want, need, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local grant, tight, tight_committed = want, '', 0
for i = 0, n - 1 do
  local scope, limit = ARGV[5 + 2 * i], tonumber(ARGV[6 + 2 * i])
  local held = 0
  local all = redis.call('HGETALL', KEYS[2 * i + 2])
  for j = 1, #all, 2 do
    if string.match(all[j], '|([^|]*)$') == scope then held = held + tonumber(all[j + 1]) end
  end
  local committed = tonumber(redis.call('HGET', KEYS[2 * i + 1], scope) or '0') + held
  if limit - committed < grant then grant, tight, tight_committed = limit - committed, scope, committed end
end
if grant < need then return {'0', tight, tostring(tight_committed)} end
for i = 0, n - 1 do
  redis.call('HINCRBYFLOAT', KEYS[2 * i + 2], node .. '|' .. ARGV[5 + 2 * i], tostring(grant))
  redis.call('EXPIRE', KEYS[2 * i + 2], tonumber(ARGV[5 + 2 * n]))
end
return {tostring(grant)}
"""

# KEYS: per scope the leases hash of its period. ARGV: node, amount, scopes... Gives `amount` of the node's
# lease back under every scope.
_RETURN = """
for i = 3, #ARGV do
  local field = ARGV[1] .. '|' .. ARGV[i]
  local left = tonumber(redis.call('HINCRBYFLOAT', KEYS[i - 2], field, '-' .. ARGV[2]))
  if left < 1e-9 then redis.call('HDEL', KEYS[i - 2], field) end
end
return 1
"""


# KEYS: admitted, leases, spend, unreconciled hashes of one period. ARGV: node, ttl. Charges the node's
# reported admitted amounts to spend and to unreconciled, and drops its admitted and lease fields.
# Returns {scope, usd, ...} of what was charged.
_SETTLE_NODE = """
local prefix = ARGV[1] .. '|'
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field = all[i]
  if string.sub(field, 1, #prefix) == prefix then
    local scope, usd = string.sub(field, #prefix + 1), tonumber(all[i + 1])
    if usd > 0 then
      redis.call('HINCRBYFLOAT', KEYS[3], scope, all[i + 1])
      redis.call('HINCRBYFLOAT', KEYS[4], scope, all[i + 1])
      redis.call('EXPIRE', KEYS[3], ARGV[2])
      redis.call('EXPIRE', KEYS[4], ARGV[2])
      out[#out + 1] = scope
      out[#out + 1] = all[i + 1]
    end
    redis.call('HDEL', KEYS[1], field)
  end
end
for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', KEYS[2], field) end
end
return out
"""


class Grant:
    """The outcome of `reserve`: `amount` granted (0 when refused), else the scope without room."""

    __slots__ = ("amount", "committed", "scope")

    def __init__(self, amount: float, scope: str = "", committed: float = 0.0) -> None:
        self.amount = amount
        self.scope = scope
        self.committed = committed

    @property
    def ok(self) -> bool:
        return self.amount > 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def reserve(
    redis: Redis, node: str, wanted: float, needed: float, limits: Sequence[tuple[str, float, str]]
) -> Grant:
    """Lease up to `wanted` USD (at least `needed`, else nothing) for `node` under every
    `(scope, limit, period)`: each scope in its own period."""
    argv: list[str | int] = [node, repr(float(wanted)), repr(float(needed)), len(limits)]
    key_list: list[str] = []
    for scope, limit, period in limits:
        argv.extend((scope, repr(float(limit))))
        key_list += [keys.telemetry_spend(period), keys.telemetry_reserved(period)]
    argv.append(int(keys.TELEMETRY_SPEND_TTL_SECONDS))
    with guard("leasing budget"):
        reply = await redis.eval(_GRANT, len(key_list), *key_list, *argv)
    amount = float(_text(reply[0]))
    if amount > 0:
        return Grant(amount)
    return Grant(0.0, _text(reply[1]), float(_text(reply[2])))


async def return_lease(redis: Redis, node: str, amount: float, scopes: Sequence[tuple[str, str]]) -> None:
    """Give back `amount` of `node`'s unused lease under every `(scope, period)`."""
    with guard("returning a budget lease"):
        await redis.eval(
            _RETURN,
            len(scopes),
            *(keys.telemetry_reserved(period) for _, period in scopes),
            node,
            repr(float(amount)),
            *(scope for scope, _ in scopes),
        )


async def read_reserved(redis: Redis, period: str) -> dict[str, float]:
    """USD leased out and not yet spent, per budget scope, summed over nodes."""
    with guard("reading budget leases"):
        reply = await redis.hgetall(keys.telemetry_reserved(period))
    totals: dict[str, float] = {}
    for field, raw in decode_hash(reply).items():
        _, sep, scope = field.rpartition("|")
        if sep:
            totals[scope] = totals.get(scope, 0.0) + float(raw)
    return totals


async def report_admitted(redis: Redis, node: str, admitted: Mapping[tuple[str, str], float]) -> None:
    """Replace `node`'s reported admitted-not-recorded USD per (scope, period); zero amounts are removed."""
    with guard("reporting admitted budget"):
        async with redis.pipeline(transaction=False) as pipe:
            for (scope, period), usd in admitted.items():
                key = keys.telemetry_admitted(period)
                if usd > 1e-12:
                    pipe.hset(key, f"{node}|{scope}", repr(float(usd)))
                    pipe.expire(key, int(keys.TELEMETRY_SPEND_TTL_SECONDS))
                else:
                    pipe.hdel(key, f"{node}|{scope}")
            await pipe.execute()


async def settle_node(redis: Redis, periods: Sequence[str], node: str) -> dict[tuple[str, str], float]:
    """Charge what `node` admitted and never recorded as unreconciled spend and drop its leases (it is gone,
    or a new process took its id). Returns (scope, period) -> USD charged."""
    charged: dict[tuple[str, str], float] = {}
    ttl = int(keys.TELEMETRY_SPEND_TTL_SECONDS)
    with guard("settling a gone node's budget"):
        for period in periods:
            reply = await redis.eval(
                _SETTLE_NODE,
                4,
                keys.telemetry_admitted(period),
                keys.telemetry_reserved(period),
                keys.telemetry_spend(period),
                keys.telemetry_unreconciled(period),
                node,
                ttl,
            )
            for scope, usd in zip(reply[::2], reply[1::2], strict=True):
                charged[(_text(scope), period)] = float(_text(usd))
    return charged


async def read_unreconciled(redis: Redis, period: str) -> dict[str, float]:
    """USD charged in `period` per scope for dead nodes' admitted, never recorded requests."""
    with guard("reading unreconciled spend"):
        reply = await redis.hgetall(keys.telemetry_unreconciled(period))
    return {scope: float(raw) for scope, raw in decode_hash(reply).items()}
