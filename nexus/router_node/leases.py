"""This router node's budget leases (see `nexus.core.reservations` for the scheme and its guarantee).

`take` admits a request against the node's lease for its scopes, asking Redis for more only when the
lease is short: far from the limit once per many requests, near it about once per request. The amounts
live in the node's pure spend ledger (`nexus.core.ledger`: admission and renewal sizing are decided there);
this module does the Redis calls and the timing. Renewals for
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
from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from nexus.core.ledger import EPSILON, LeaseKey, LedgerCell
from nexus.core.reservations import reserve, return_lease

__all__ = ["IDLE_SECONDS", "AdmittedBook", "LeaseBook"]

IDLE_SECONDS = 1.0


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
            if left > EPSILON:
                self.amounts[(scope, period)] = left
            else:
                self.amounts.pop((scope, period), None)

    def changes(self) -> dict[tuple[str, str], float]:
        """What to report: every amount that differs from the last report (0 for settled ones)."""
        out = {k: v for k, v in self.amounts.items() if abs(self.reported.get(k, 0.0) - v) > EPSILON}
        out.update({k: 0.0 for k in self.reported if k not in self.amounts})
        return out


class LeaseBook:
    def __init__(self, redis: Redis, node_id: str, cell: LedgerCell) -> None:
        self._redis = redis
        self._node = node_id
        self._cell = cell  # the node's ledger: leases held unused, and the reserved amounts they count in
        self._used_at: dict[LeaseKey, float] = {}
        self._locks: dict[LeaseKey, asyncio.Lock] = {}

    def unused(self, scope: str) -> float:
        """Lease this node holds for `scope` and has not given to a request yet."""
        return self._cell.ledger.leased(scope)

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
            ask = self._cell.ledger.lease_request(limits, estimate, room)
            grant = await reserve(self._redis, self._node, ask.want, ask.need, limits)
            if not grant.ok:
                return False
            self._cell.ledger = self._cell.ledger.granted(key, grant.amount)
            return self._take_local(key, estimate)

    def _take_local(self, key: LeaseKey, estimate: float) -> bool:
        after = self._cell.ledger.take(key, estimate)
        if after is None:
            return False
        self._cell.ledger = after
        self._used_at[key] = time.monotonic()
        return True

    async def _give_back(self, key: LeaseKey) -> None:
        """Return the whole unused lease under `key` to Redis (kept, to try again, if Redis fails)."""
        self._cell.ledger, amount = self._cell.ledger.withdrawn(key)
        self._used_at.pop(key, None)
        if amount <= EPSILON:
            return
        try:
            await return_lease(self._redis, self._node, amount, key)
        except BaseException:
            self._cell.ledger = self._cell.ledger.restored(key, amount)  # try again next time
            raise
        self._cell.ledger = self._cell.ledger.given_back(key, amount)

    async def return_all(self) -> None:
        """Give back every unused lease (a graceful stop): nothing this node held outlives it."""
        for key in list(self._cell.ledger.leases):
            await self._give_back(key)

    async def return_idle(self, current: Mapping[str, str]) -> None:
        """Give back leases unused for IDLE_SECONDS, and any with a scope whose period is not `current[scope]`
        any more."""
        now = time.monotonic()
        for key in list(self._cell.ledger.leases):
            lock = self._locks.get(key)
            if lock is not None and lock.locked():
                continue
            idle = now - self._used_at.get(key, 0.0) >= IDLE_SECONDS
            if idle or any(current.get(scope, period) != period for scope, period in key):
                await self._give_back(key)
