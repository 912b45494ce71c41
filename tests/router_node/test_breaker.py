"""The circuit breaker state machine, driven by an injected clock: one scenario per row."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from nexus.router_node.breaker import EMPTY_VIEW, Breakers, BreakerSettings, State

SETTINGS = BreakerSettings(open_after=5, retry_seconds=1.0, max_cooldown_seconds=300.0, demote_after=3,
                           demote_seconds=10.0)


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Expect:
    open_wait: float | None = None  # seconds to the next trial when the circuit refuses "a", else None
    usable_unhealthy: bool = False
    demoted: bool = False
    begins: tuple[bool, ...] = (True,)  # successive begin("a") results at the final time
    state_after: State | None = None  # a's state after those begins
    retry_after: int | None = None


@dataclass(frozen=True)
class Case:
    steps: tuple[tuple[float, str, object], ...]  # (time, operation, argument), operations on backend "a"
    expect: Expect = field(default_factory=Expect)


def fails(n: int, t: float = 0.0) -> tuple[tuple[float, str, object], ...]:
    return tuple((t, "fail", "connection refused") for _ in range(n))


CASES = {
    "four-failures-stay-closed-but-demoted": Case(fails(4), Expect(demoted=True)),
    "two-failures-neither": Case(fails(2), Expect()),
    "five-failures-open": Case(fails(5), Expect(open_wait=1.0, begins=(False,), retry_after=1)),
    "trial-due-after-retry-seconds": Case(
        (*fails(5), (1.0, "tick", None)), Expect(demoted=True, begins=(True, False), state_after=State.HALF_OPEN)
    ),
    "trial-answer-closes": Case(
        (*fails(5), (1.0, "begin", None), (1.2, "ok", None)), Expect(begins=(True, True), state_after=State.CLOSED)
    ),
    "trial-failure-reopens": Case(
        (*fails(5), (1.0, "begin", None), (1.2, "fail", "timed out")),
        Expect(open_wait=1.0, begins=(False,), state_after=State.OPEN, retry_after=1),
    ),
    "stuck-trial-lets-another-start": Case(
        (*fails(5), (1.0, "begin", None), (2.0, "tick", None)), Expect(demoted=True, begins=(True, False))
    ),
    "half-open-refuses-others-meanwhile": Case(
        (*fails(5), (1.0, "begin", None), (1.5, "tick", None)),
        Expect(open_wait=0.5, begins=(False,), state_after=State.HALF_OPEN, retry_after=1),
    ),
    "answer-resets-the-streak": Case((*fails(4), (0.0, "ok", None), *fails(4)), Expect(demoted=True)),
    "429-cools-down-for-retry-after": Case(
        ((0.0, "429", 37.0), (0.8, "tick", None)), Expect(open_wait=36.2, begins=(False,), retry_after=37)
    ),
    "429-cooldown-ends-in-a-trial": Case(
        ((0.0, "429", 37.0), (37.0, "tick", None)), Expect(demoted=True, state_after=State.HALF_OPEN)
    ),
    "429-retry-after-is-capped": Case(((0.0, "429", 10_000.0),), Expect(open_wait=300.0, begins=(False,),
                                                                        retry_after=300)),
    "429-without-retry-after": Case(((0.0, "429", None),), Expect(open_wait=1.0, begins=(False,), retry_after=1)),
    "demotion-ends": Case((*fails(3), (10.0, "tick", None)), Expect()),
    "worker-unhealthy-without-local-evidence-defers": Case(((0.0, "unhealthy", 0.0),), Expect()),
    "worker-unhealthy-and-failed-here-trials": Case(
        ((0.0, "unhealthy", 0.0), (0.5, "fail", "connection refused")),
        Expect(usable_unhealthy=True, demoted=True, begins=(True, False), state_after=State.HALF_OPEN),
    ),
    "worker-unhealthy-but-answered-here-since": Case(
        ((0.0, "unhealthy", 0.0), (0.5, "fail", "refused"), (0.6, "begin", None), (1.0, "ok", None)),
        Expect(usable_unhealthy=True, begins=(True, True), state_after=State.CLOSED),
    ),
    "a-repeated-verdict-keeps-its-start": Case(
        ((0.0, "unhealthy", 0.0), (0.5, "fail", "refused"), (0.6, "begin", None), (1.0, "ok", None),
         (10.0, "unhealthy", 10.0)),
        Expect(usable_unhealthy=True),
    ),
    "a-new-verdict-after-recovery-counts": Case(
        ((0.0, "unhealthy", 0.0), (0.5, "fail", "refused"), (0.6, "begin", None), (1.0, "ok", None),
         (5.0, "healthy", None), (10.0, "unhealthy", 10.0)),
        Expect(),
    ),
    "answer-before-the-verdict-does-not-count": Case(((0.0, "ok", None), (1.0, "unhealthy", 1.0)), Expect()),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_breaker(case: Case) -> None:
    clock = Clock()
    breakers = Breakers(SETTINGS, clock)
    for t, op, arg in case.steps:
        clock.now = t
        if op == "fail":
            breakers.failed("a", str(arg))
        elif op == "ok":
            breakers.succeeded("a")
        elif op == "429":
            breakers.rate_limited("a", arg)  # type: ignore[arg-type]
        elif op == "begin":
            assert breakers.begin("a")
        elif op == "unhealthy":
            breakers.set_unhealthy({"a": arg})  # type: ignore[dict-item]
        elif op == "healthy":
            breakers.set_unhealthy({})
    view, want = breakers.view(), case.expect
    if want.open_wait is None:
        assert "a" not in view.open
    else:
        reason, wait = view.open["a"]
        assert wait == pytest.approx(want.open_wait) and reason.startswith("circuit open: ")
    assert ("a" in view.usable_unhealthy) is want.usable_unhealthy
    assert ("a" in view.demoted) is want.demoted
    assert breakers.retry_after(["a", "never-seen"]) == want.retry_after
    assert tuple(breakers.begin("a") for _ in want.begins) == want.begins
    if want.state_after is not None:
        assert breakers.circuit("a").state is want.state_after


def test_reasons_say_why_and_when() -> None:
    clock = Clock()
    breakers = Breakers(SETTINGS, clock)
    for _ in range(5):
        breakers.failed("a", "connection refused")
    breakers.rate_limited("b", 37.0)
    clock.now = 0.6
    view = breakers.view()
    assert view.open["a"][0] == (
        "circuit open: 5 failed attempts in a row on this replica (last: connection refused); next trial in 0.4 s")
    assert view.open["b"][0] == "circuit open: rate-limited by the backend (HTTP 429, Retry-After 37 s); " \
        "next trial in 36.4 s"


def test_healthy_backends_leave_no_state_and_the_view_is_shared() -> None:
    clock = Clock()
    breakers = Breakers(SETTINGS, clock)
    breakers.succeeded("a")
    assert breakers.view() is EMPTY_VIEW
    breakers.failed("a", "x")
    breakers.succeeded("a")
    assert breakers.view() is EMPTY_VIEW  # an answered streak is forgotten
    assert breakers.view() is EMPTY_VIEW


def test_the_view_is_cached_until_a_time_in_it_passes() -> None:
    clock = Clock()
    breakers = Breakers(SETTINGS, clock)
    for _ in range(5):
        breakers.failed("a", "x")
    first = breakers.view()
    clock.now = 0.2
    assert breakers.view() is first  # nothing changed and no time in it passed
    clock.now = 0.5
    assert breakers.view().open["a"][1] == pytest.approx(0.5)  # the countdown is kept about right
    clock.now = 1.0
    assert "a" not in breakers.view().open and "a" in breakers.view().demoted
