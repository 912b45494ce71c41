"""This router node's rate-limit admission: `nexus.core.allowance` bookkeeping over `nexus.core.rates` grants.

`admit(tenant, tokens)` is the one call on the way in: it returns a `Ticket` (admitted; its headers go on the
response) or raises `RateLimited` (429, `Retry-After`, the headers). It goes to Redis only when an allowance is
short, and grants for one tenant's scopes are serialised, so concurrent requests that find an allowance short
wait for one grant instead of each asking. `settle(ticket, real_tokens)` is the one call on the way out (TPM to
the real usage). `maintain` (every `MAINTAIN_SECONDS`) returns expired allowances and sends corrections; `close`
returns everything. Redis unreachable while an allowance is short: the request is refused (429 with
`Retry-After: 1`), as budgets refuse: a limit must hold, not fail open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable

from redis.asyncio import Redis

from nexus.core.allowance import AllowanceBook, Denied, Need, Ticket
from nexus.core.errors import StateError
from nexus.core.gateway_errors import RateLimited
from nexus.core.rates import grant
from nexus.core.tenancy import Tenant

__all__ = ["MAINTAIN_SECONDS", "NO_TICKET", "RateGate"]

MAINTAIN_SECONDS = 0.1
NO_TICKET = Ticket()
_KIND_WORD = {"rpm": "requests per minute (RPM)", "tpm": "tokens per minute (TPM)"}


def _needs(tenant: Tenant, tokens: int) -> list[Need]:
    out: list[Need] = []
    for scope, rpm, tpm in tenant.rates:
        if rpm is not None:
            out.append(("rpm", scope, rpm, 1))
        if tpm is not None:
            out.append(("tpm", scope, tpm, max(1, tokens)))
    return out


class RateGate:
    def __init__(
        self, redis: Redis, node_id: str, clock: Callable[[], float] = time.monotonic, window_ms: int = 60_000
    ) -> None:
        self._window_ms = window_ms
        self._redis = redis
        self._node = node_id
        self._clock = clock
        self.book = AllowanceBook()
        self._locks: dict[str, asyncio.Lock] = {}
        self._seq = itertools.count(random.getrandbits(40))

    async def admit(self, tenant: Tenant | None, tokens: int) -> Ticket:
        """Admit one request of `tenant` estimated at `tokens` (prompt + max output) under all its limits."""
        if tenant is None or not tenant.rates:
            return NO_TICKET
        needs = _needs(tenant, tokens)
        outcome = self.book.take(needs, self._clock())
        if isinstance(outcome, list):
            lock = self._locks.setdefault(tenant.key_id, asyncio.Lock())
            async with lock:
                outcome = self.book.take(needs, self._clock())  # another request may have been granted meanwhile
                if isinstance(outcome, list):
                    outcome = await self._ask(outcome, needs)
        if isinstance(outcome, Denied):
            raise self._limited(outcome, needs)
        return outcome

    async def _ask(self, asks: list, needs: list[Need]) -> Ticket | Denied:
        sent = self._clock()
        corrections = self.book.drain()
        try:
            reply = await grant(self._redis, self._node, next(self._seq), asks, corrections, self._window_ms)
        except StateError:
            self.book.corrections[:0] = corrections  # sent again with the next call
            kind, scope, limit, _ = needs[0]
            return Denied(kind, scope, limit, 1.0)
        if not reply.ok:
            return self.book.refused(asks, reply, sent)
        self.book.granted(asks, reply, sent)
        outcome = self.book.take(needs, self._clock())
        if isinstance(outcome, list):  # granted less than needed cannot happen (need <= room); be safe
            kind, scope, limit, _ = needs[0]
            return Denied(kind, scope, limit, 1.0)
        return outcome

    def _limited(self, denied: Denied, needs: list[Need]) -> RateLimited:
        headers = dict((k.decode(), v.decode()) for k, v in self.book.headers(needs, self._clock()))
        headers["Retry-After"] = str(max(1, int(-(-denied.retry_after // 1))))
        who = "team" if denied.scope.startswith("team:") else "key"
        return RateLimited(
            f"rate limit of {who} {denied.scope.removeprefix('team:')} reached on "
            f"{_KIND_WORD[denied.kind]}: limit {denied.limit}; retry after {headers['Retry-After']} s",
            kind=denied.kind,
            headers=headers,
        )

    def settle(self, ticket: Ticket, real_tokens: int | None) -> None:
        """The request is over: TPM is corrected to `real_tokens` (None: nothing was served, nothing used)."""
        if ticket.taken:
            self.book.settle(ticket, real_tokens or 0)

    async def maintain(self) -> None:
        """Return expired allowances and send pending corrections (one round trip when there are any)."""
        self.book.expire(self._clock())
        corrections = self.book.drain()
        if not corrections:
            return
        try:
            await grant(self._redis, self._node, next(self._seq), [], corrections, self._window_ms)
        except StateError:
            self.book.corrections[:0] = corrections

    async def run(self) -> None:
        while True:
            with contextlib.suppress(StateError):
                await self.maintain()
            await asyncio.sleep(MAINTAIN_SECONDS)

    def forget_missing(self, tenants_scopes: set[tuple[str, str]]) -> None:
        self.book.forget(tenants_scopes)

    async def close(self) -> None:
        self.book.release_all()
        with contextlib.suppress(StateError):
            await self.maintain()
