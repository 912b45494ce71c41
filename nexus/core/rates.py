"""Rate-limit allowances in Redis: RPM and TPM per key and per team, exact across router replicas.

Router nodes never ask Redis per request. A node asks for an *allowance* (a number of requests or tokens it
may admit under one scope) with one atomic script, and admits requests from it locally until it is used up or
its lifetime (`ALLOWANCE_SECONDS`) ends. Each grant is a member of the scope's zset `{rate}:<kind>:<scope>`
(`nexus.core.keys.rate_window`): `"<count>:<node>:<seq>"`, scored by the Redis time (unix ms) its allowance
stops being usable. The script grants only what keeps

    sum of the counts of every grant whose allowance was usable at some point of the last 60 s  <=  limit

and so bounds every sliding 60 s window: the requests admitted in a window [a, a + 60 s) come from grants
usable in it, and the last of those was made after all the others, when every one of them still counted
(its score was past a). Admissions in any 60 s window therefore never exceed the limit (bound 0; see
docs/tenancy.md for how it is measured). A node stops using an allowance `ALLOWANCE_SECONDS` after it *sent*
the request for it (its own monotonic clock), which is never later than the Redis time it was scored with.

Corrections are members too: what a node did not use of an allowance goes back as a negative count with the
allowance's own score (it counted for exactly the interval it could have been used in); a request that used
more tokens than its estimate adds the excess as a positive count scored now. A node's corrections travel with
its next grant, or with its maintenance call (`settle`) when it needs no grant.

A refused grant returns when room appears at the earliest (the score of the counted entries that must leave
the window first), so a node can answer 429 locally until then instead of asking again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.observed import guard

__all__ = [
    "ALLOWANCE_SECONDS",
    "Correction",
    "GrantReply",
    "ScopeAsk",
    "grant",
    "read_usage",
    "window_ms",
]

ALLOWANCE_SECONDS = 1.0  # how long a node may use an allowance after asking for it
_WINDOW_MS = keys.RATE_WINDOW_SECONDS * 1000

# KEYS: one zset per asked scope, then one per corrected scope. ARGV: node, seq, ttl ms, window ms, asks n,
# corrections m, then per ask: limit, want, need; then per correction: key index, score ms (0: now), delta.
# Corrections first; then, for every ask, room = limit - counted; all-or-nothing: when any room is below its
# need nothing is granted and the reply is {0, index, wait ms, counted}; else each ask gets min(want, room) and the
# reply is {1, now ms, end ms, then per ask: granted, counted after the grant, ms until its oldest entry leaves}.
_GRANT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, seq, ttl, window = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local n, m = tonumber(ARGV[5]), tonumber(ARGV[6])
local c0 = 6 + 3 * n
for j = 1, m do
  local k, score, delta = tonumber(ARGV[c0 + 3 * j - 2]), tonumber(ARGV[c0 + 3 * j - 1]), ARGV[c0 + 3 * j]
  if score == 0 then score = now end
  if score > now - window then
    redis.call('ZADD', KEYS[k], score, delta .. ':' .. node .. ':c' .. seq .. '.' .. j)
    redis.call('PEXPIRE', KEYS[k], window + ttl + 60000)
  end
end
local grants, counted, resets = {}, {}, {}
for i = 1, n do
  local limit, want, need = tonumber(ARGV[4 + 3 * i]), tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local entries = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
  local used = 0
  for e = 1, #entries, 2 do used = used + tonumber(string.match(entries[e], '^(-?%d+):')) end
  local room = limit - used
  local reset = 0
  if #entries > 0 then reset = tonumber(entries[2]) + window - now end
  if room < need then
    local freed, wait = 0, window + ttl
    for e = 1, #entries, 2 do
      freed = freed + tonumber(string.match(entries[e], '^(-?%d+):'))
      if room + freed >= need then wait = tonumber(entries[e + 1]) + window - now; break end
    end
    return {0, i, wait, used}
  end
  grants[i] = math.min(want, room)
  counted[i] = used + grants[i]
  resets[i] = reset
end
local out = {1, now, now + ttl}
for i = 1, n do
  if grants[i] > 0 then
    redis.call('ZADD', KEYS[i], now + ttl, grants[i] .. ':' .. node .. ':' .. seq .. '.' .. i)
    redis.call('PEXPIRE', KEYS[i], window + ttl + 60000)
    if resets[i] == 0 then resets[i] = ttl + window end
  end
  out[#out + 1] = grants[i]
  out[#out + 1] = counted[i]
  out[#out + 1] = resets[i]
end
return out
"""


def window_ms(testing_seconds: float = 0.0) -> int:
    """The window's length in ms: 60 s, unless `[testing] rate_window_seconds` sets another."""
    return int(testing_seconds * 1000) if testing_seconds > 0 else _WINDOW_MS


@dataclass(frozen=True, slots=True)
class ScopeAsk:
    """An allowance wanted under one scope and kind: at least `need`, up to `want`, under `limit`."""

    kind: str  # "rpm" | "tpm"
    scope: str
    limit: int
    want: int
    need: int


@dataclass(frozen=True, slots=True)
class Correction:
    """A count to add under (kind, scope), scored `end_ms` (the allowance's end; 0: now)."""

    kind: str
    scope: str
    end_ms: int
    delta: int


@dataclass(frozen=True, slots=True)
class GrantReply:
    ok: bool
    now_ms: int = 0
    end_ms: int = 0
    granted: tuple[int, ...] = ()  # per ask, in order
    counted: tuple[int, ...] = ()  # the scope's window total after the grant
    reset_ms: tuple[int, ...] = ()  # until the oldest counted entry leaves the window
    refused: int = -1  # index of the ask without room
    wait_ms: int = 0  # until that room appears at the earliest


async def grant(
    redis: Redis,
    node: str,
    seq: int,
    asks: Sequence[ScopeAsk],
    corrections: Sequence[Correction] = (),
    window_ms: int = _WINDOW_MS,
) -> GrantReply:
    """Apply `corrections`, then grant every ask or none (one script, one round trip). `window_ms` is the
    window's length (60 s; `[testing] rate_window_seconds` shortens it for tests)."""
    key_list = [keys.rate_window(a.kind, a.scope) for a in asks]
    argv: list[str | int] = [
        node, seq, int(ALLOWANCE_SECONDS * 1000), window_ms, len(asks), len(corrections),
    ]
    for a in asks:
        argv += [a.limit, a.want, a.need]
    for c in corrections:
        key_list.append(keys.rate_window(c.kind, c.scope))
        argv += [len(key_list), c.end_ms, c.delta]
    with guard("granting a rate-limit allowance"):
        reply = await redis.eval(_GRANT, len(key_list), *key_list, *argv)
    values = [int(v) for v in reply]
    if values[0] == 0:
        return GrantReply(False, refused=values[1] - 1, wait_ms=max(0, values[2]), counted=(values[3],))
    rest = values[3:]
    return GrantReply(
        True, now_ms=values[1], end_ms=values[2], granted=tuple(rest[0::3]), counted=tuple(rest[1::3]),
        reset_ms=tuple(rest[2::3]),
    )


async def read_usage(redis: Redis, kind: str, scope: str, window_ms: int = _WINDOW_MS) -> int:
    """What the last window counts under (kind, scope): grants and corrections (for the admin views)."""
    with guard("reading rate-limit usage"):
        t = await redis.time()
        now = int(t[0]) * 1000 + int(t[1]) // 1000
        entries = await redis.zrangebyscore(keys.rate_window(kind, scope), now - window_ms, "+inf")
    total = 0
    for member in entries:
        text = member.decode() if isinstance(member, bytes) else str(member)
        total += int(text.split(":", 1)[0])
    return max(0, total)
