"""Properties of a node's rate allowances (nexus.core.allowance), over any sequence of requests and clock steps.

Redis is modelled by `_Granter`, the script's rule inside one window (nothing leaves it in these runs: they
last less than 60 s): room = limit - granted + returned, all-or-nothing over a request's asks. Two properties:
what a node admits under a scope never exceeds what it was granted, so never the limit; and everything granted
is either admitted or returned exactly once (after `release_all`), which is what keeps other replicas' room.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.core.allowance import AllowanceBook, Denied, Need, Ticket
from nexus.core.rates import GrantReply, ScopeAsk

LIMIT = 50


class _Granter:
    def __init__(self) -> None:
        self.granted: dict[tuple[str, str], int] = {}
        self.returned: dict[tuple[str, str], int] = {}
        self.end = 0

    def room(self, kind: str, scope: str, limit: int) -> int:
        key = (kind, scope)
        return limit - self.granted.get(key, 0) + self.returned.get(key, 0)

    def apply(self, book: AllowanceBook) -> None:
        for c in book.drain():
            assert c.delta < 0, "RPM is never corrected upwards (only TPM settles)"
            self.returned[(c.kind, c.scope)] = self.returned.get((c.kind, c.scope), 0) - c.delta

    def grant(self, asks: list[ScopeAsk]) -> GrantReply:
        for i, ask in enumerate(asks):
            if self.room(ask.kind, ask.scope, ask.limit) < ask.need:
                return GrantReply(False, refused=i, wait_ms=500, counted=(LIMIT,))
        self.end += 1
        got = []
        for ask in asks:
            n = min(ask.want, self.room(ask.kind, ask.scope, ask.limit))
            self.granted[(ask.kind, ask.scope)] = self.granted.get((ask.kind, ask.scope), 0) + n
            got.append(n)
        return GrantReply(True, 0, self.end, tuple(got), tuple(LIMIT for _ in asks), tuple(60_000 for _ in asks))


_needs = st.sampled_from([
    [("rpm", "key_a", LIMIT, 1)],
    [("rpm", "key_a", LIMIT, 1), ("rpm", "team:t", LIMIT, 1)],
    [("rpm", "key_b", LIMIT, 1), ("rpm", "team:t", LIMIT, 1)],
])
_step = st.one_of(
    st.tuples(st.just("request"), _needs),
    # the node's maintenance returns expired allowances every 0.1 s, but a request may come first
    st.tuples(st.just("wait"), st.tuples(st.floats(min_value=0.0, max_value=1.5), st.booleans())),
)


def _admit(book: AllowanceBook, redis: _Granter, needs: list[Need], now: float) -> bool:
    outcome = book.take(needs, now)
    if isinstance(outcome, list):
        redis.apply(book)  # corrections travel with the grant
        reply = redis.grant(outcome)
        if not reply.ok:
            book.refused(outcome, reply, now)
            return False
        book.granted(outcome, reply, now)
        outcome = book.take(needs, now)
    assert not isinstance(outcome, list), "a grant of at least the need admits the request"
    return isinstance(outcome, Ticket)


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, min_size=1, max_size=200))
def test_admissions_never_exceed_grants_and_every_grant_is_admitted_or_returned_once(steps) -> None:
    book, redis = AllowanceBook(), _Granter()
    admitted: dict[tuple[str, str], int] = {}
    now = 0.0
    for kind, arg in steps:
        if kind == "wait":
            now += arg[0]
            if arg[1]:
                book.expire(now)
            continue
        if _admit(book, redis, arg, now):
            for k, scope, _limit, amount in arg:
                admitted[(k, scope)] = admitted.get((k, scope), 0) + amount
        for key, n in admitted.items():
            assert n <= redis.granted.get(key, 0) <= LIMIT + redis.returned.get(key, 0)
            assert n <= LIMIT, f"{key}: {n} admitted under a limit of {LIMIT}"
        assert all(a.left >= 0 for a in book.allowances.values())
    book.release_all()
    redis.apply(book)
    for key, got in redis.granted.items():
        assert got == admitted.get(key, 0) + redis.returned.get(key, 0), key


def test_a_refused_scope_is_denied_locally_until_its_wait_passes() -> None:
    book, redis = AllowanceBook(), _Granter()
    redis.granted[("rpm", "key_a")] = LIMIT  # another replica holds the whole limit
    needs: list[Need] = [("rpm", "key_a", LIMIT, 1)]
    assert not _admit(book, redis, needs, 0.0)
    asked = redis.end
    assert isinstance(book.take(needs, 0.2), Denied)  # no new ask while the refusal's wait runs
    assert redis.end == asked
    redis.returned[("rpm", "key_a")] = 1
    assert isinstance(book.take(needs, 0.6), list)  # past it: asks again
