"""This router node's budget leases (see `nexus.core.reservations` for the scheme and its guarantee).

`take` admits a request against the node's lease for its scopes, asking Redis for more only when the
lease is short: far from the limit once per many requests, near it about once per request. Renewals for
one set of scopes are serialised, so concurrent requests that find the lease short wait for one renewal
instead of each leasing more. Leases unused for `IDLE_SECONDS` go back (`return_idle`, called from the
telemetry loop), so budget held by a quiet node is not hidden from busy ones for long; `return_all` gives
everything back when the node stops.

`AdmittedBook` counts what this node's requests took from leases and has not been recorded in Redis yet (in
flight, or buffered): the telemetry loop reports it on every flush, so if the node dies that amount is charged
as unreconciled spend instead of vanishing with the lease (`nexus.core.reservations.settle_node`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from redis.asyncio import Redis

from nexus.core.reservations import reserve, return_lease

__all__ = ["IDLE_SECONDS", "LEASE_SHARE", "AdmittedBook", "LeaseBook"]

LEASE_SHARE = 0.02  # a lease is at most this share of the limit...
ROOM_SHARE = 0.25  # ...and of the room left, so leases shrink as the budget runs out
IDLE_SECONDS = 1.0

_Key = tuple[tuple[str, str], ...]  # ((scope, period), ...): each scope leases in its own period


class AdmittedBook:
    """(scope, period) -> USD admitted against leases and not yet written to Redis by a telemetry record."""

    __slots__ = ("amounts", "reported")

    def __init__(self) -> None:
        self.amounts: dict[tuple[str, str], float] = {}
        self.reported: dict[tuple[str, str], float] = {}

    def admit(self, periods: Mapping[str, str], usd: float) -> None:
        for scope, period in periods.items():
            self.amounts[(scope, period)] = self.amounts.get((scope, period), 0.0) + usd

    def settle(self, periods: Mapping[str, str], usd: float) -> None:
        """A record carrying `usd` under `periods` was written: that much is spend in Redis now."""
        for scope, period in periods.items():
            left = self.amounts.get((scope, period), 0.0) - usd
            if left > 1e-12:
                self.amounts[(scope, period)] = left
            else:
                self.amounts.pop((scope, period), None)

    def changes(self) -> dict[tuple[str, str], float]:
        """What to report: every amount that differs from the last report (0 for settled ones)."""
        out = {k: v for k, v in self.amounts.items() if abs(self.reported.get(k, 0.0) - v) > 1e-12}
        out.update({k: 0.0 for k in self.reported if k not in self.amounts})
        return out


class LeaseBook:
    def __init__(self, redis: Redis, node_id: str, on_change: Callable[[Sequence[str], float], None]) -> None:
        self._redis = redis
        self._node = node_id
        self._on_change = on_change  # (scopes, +granted / -returned): keeps the node's view of leases current
        self._avail: dict[_Key, float] = {}
        self._used_at: dict[_Key, float] = {}
        self._locks: dict[_Key, asyncio.Lock] = {}

    def unused(self, scope: str) -> float:
        """Lease this node holds for `scope` and has not given to a request yet."""
        return sum(v for key, v in self._avail.items() if any(s == scope for s, _ in key))

    async def take(self, limits: Sequence[tuple[str, float, str]], estimate: float, room: float) -> bool:
        """Take `estimate` from the lease under every `(scope, limit, period)`, renewing it if short; False
        when the budget has no room. `room` is this node's view of what is left (sizes the renewal, never
        decides admission)."""
        key = tuple((scope, period) for scope, _, period in limits)
        if self._take_local(key, estimate):
            return True
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self._take_local(key, estimate):  # another request renewed while this one waited
                return True
            smallest_limit = min(limit for _, limit, _ in limits)
            want = max(estimate, min(smallest_limit * LEASE_SHARE, max(room, 0.0) * ROOM_SHARE))
            have = self._avail.get(key, 0.0)
            grant = await reserve(self._redis, self._node, want, estimate - have, limits)
            if not grant.ok:
                return False
            self._avail[key] = have + grant.amount
            self._on_change([scope for scope, _ in key], grant.amount)
            return self._take_local(key, estimate)

    def _take_local(self, key: _Key, estimate: float) -> bool:
        have = self._avail.get(key, 0.0)
        if have + 1e-12 < estimate:
            return False
        self._avail[key] = have - estimate
        self._used_at[key] = time.monotonic()
        return True

    async def return_all(self) -> None:
        """Give back every unused lease (a graceful stop): nothing this node held outlives it."""
        for key in list(self._avail):
            amount = self._avail.pop(key)
            self._used_at.pop(key, None)
            if amount > 1e-12:
                await return_lease(self._redis, self._node, amount, key)
                self._on_change([scope for scope, _ in key], -amount)

    async def return_idle(self, current: Mapping[str, str]) -> None:
        """Give back leases unused for IDLE_SECONDS, and any with a scope whose period is not `current[scope]`
        any more."""
        now = time.monotonic()
        for key in list(self._avail):
            lock = self._locks.get(key)
            if lock is not None and lock.locked():
                continue
            idle = now - self._used_at.get(key, 0.0) >= IDLE_SECONDS
            if not (idle or any(current.get(scope, period) != period for scope, period in key)):
                continue
            amount = self._avail.pop(key)
            self._used_at.pop(key, None)
            if amount > 1e-12:
                try:
                    await return_lease(self._redis, self._node, amount, key)
                except BaseException:
                    self._avail[key] = self._avail.get(key, 0.0) + amount  # try again next time
                    raise
                self._on_change([scope for scope, _ in key], -amount)
