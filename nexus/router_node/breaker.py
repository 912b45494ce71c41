"""Circuit breakers: this replica's own verdict on each backend, a pure state machine with an injected clock.

    CLOSED ──(open_after failures in a row, or an upstream 429)──> OPEN ──(retry_at reached)──> trial due
       ^                                                             ^                              │
       └───────────(the trial answers)───── HALF_OPEN <──(a request starts the trial)──────────────┘
                                               └──(the trial fails: OPEN again for retry_seconds)

- Open, a backend is excluded from every decision on this replica (a rejection reason saying why and when
  the next trial is), so a dead backend that is the only candidate costs a fast 503 with Retry-After
  instead of an upstream attempt per request.
- Once `retry_at` is reached one request may try it: the trial. The backend is offered to decisions again,
  last (demoted), and the first request that actually starts an attempt on it takes the trial (`begin`);
  others are refused until the trial's outcome, or until it has run `retry_seconds` (a trial stuck on a
  black-holed backend never blocks recovery). A backend that answers again therefore takes traffic within
  `retry_seconds` (default 1 s) of answering.
- An upstream 429 opens the circuit for its Retry-After (capped at `max_cooldown_seconds`): a cooldown.
- The health worker's verdict is an input, and the newest evidence wins. A backend the worker calls
  unhealthy is excluded (by the RequestAnalyzer, the worker's reason) on a replica that has no evidence of
  its own; a replica that has itself seen it fail treats the verdict as an open circuit and runs trials; a
  replica that saw it answer after the verdict began routes to it (`usable_unhealthy`) before the worker's
  recovery threshold agrees. So explain never shows the worker and the breaker contradicting each other.
- Passive demotion (`demote_after` failures in a row: tried last for `demote_seconds`) is the same streak.

`Breakers` holds one `Circuit` per backend with any history; with none open and no unhealthy backend the
per-request view is a shared empty constant, and otherwise a cached one until something changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType

from nexus.core.config import QualityConfig

__all__ = [
    "EMPTY_VIEW",
    "BreakerSettings",
    "Breakers",
    "Circuit",
    "CircuitView",
    "State",
    "admission",
    "begin",
    "failed",
    "rate_limited",
    "succeeded",
]


VIEW_TTL_SECONDS = 0.25


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    open_after: int = 5
    retry_seconds: float = 1.0
    max_cooldown_seconds: float = 300.0
    demote_after: int = 3
    demote_seconds: float = 10.0

    @classmethod
    def of(cls, q: QualityConfig) -> BreakerSettings:
        """The `[quality]` section's breaker settings."""
        return cls(q.breaker_failures, q.breaker_retry_seconds, q.max_cooldown_seconds, q.eject_after_failures,
                   q.eject_seconds)


@dataclass(frozen=True, slots=True)
class Circuit:
    state: State = State.CLOSED
    failures: int = 0  # consecutive failed attempts on this replica
    retry_at: float = 0.0  # OPEN: when a trial may start; HALF_OPEN: when another may
    reason: str = ""  # why it is open, for the rejection reason
    demoted_until: float = 0.0
    last_success: float | None = None


# -- transitions (pure) ------------------------------------------------------------------------------------
def _open(c: Circuit, health_open: bool) -> bool:
    """Open by its own state, or by the worker's verdict on a backend this replica itself saw fail."""
    return c.state is not State.CLOSED or (health_open and c.failures > 0)


def admission(c: Circuit, now: float) -> float | None:
    """None: the backend may be tried (closed, or a trial is due); else seconds until the next trial."""
    if c.state is State.CLOSED or now >= c.retry_at:  # closed (maybe health-open: a trial is due now)
        return None
    return c.retry_at - now


def trial_due(c: Circuit, now: float, health_open: bool = False) -> bool:
    """May be tried now, but only as a trial."""
    return _open(c, health_open) and admission(c, now) is None


def begin(c: Circuit, now: float, s: BreakerSettings, health_open: bool = False) -> tuple[Circuit, bool]:
    """An attempt is about to start: (new state, whether it may). A due trial moves to HALF_OPEN."""
    if admission(c, now) is not None:
        return c, False
    if trial_due(c, now, health_open):
        reason = c.reason or f"the health worker marks it unhealthy, and it failed here ({c.failures} in a row)"
        return replace(c, state=State.HALF_OPEN, retry_at=now + s.retry_seconds, reason=reason), True
    return c, True


def succeeded(c: Circuit, now: float) -> Circuit:
    return Circuit(last_success=now)


def failed(c: Circuit, now: float, s: BreakerSettings, why: str) -> Circuit:
    failures = c.failures + 1
    demoted = now + s.demote_seconds if failures >= s.demote_after and s.demote_seconds > 0 else c.demoted_until
    if c.state is State.HALF_OPEN or failures >= s.open_after:
        reason = f"{failures} failed attempts in a row on this replica (last: {why})"
        return replace(c, state=State.OPEN, failures=failures, retry_at=now + s.retry_seconds, reason=reason,
                       demoted_until=demoted)
    return replace(c, failures=failures, demoted_until=demoted)


def rate_limited(c: Circuit, now: float, s: BreakerSettings, retry_after: float | None) -> Circuit:
    """An upstream 429: cool down for its Retry-After (capped), else for `retry_seconds`."""
    wait = min(retry_after, s.max_cooldown_seconds) if retry_after is not None else s.retry_seconds
    told = f", Retry-After {retry_after:g} s" if retry_after is not None else ""
    reason = f"rate-limited by the backend (HTTP 429{told})"
    return replace(c, state=State.OPEN, retry_at=max(c.retry_at, now + wait), reason=reason)


# -- the per-request view and the node's holder --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CircuitView:
    """What one decision needs: backends to exclude (with reason) and seconds to their next trial; backends
    the worker calls unhealthy that this replica may use (answered since, or a trial is due); and backends
    to try last (trials due, and passive demotion)."""

    open: Mapping[str, tuple[str, float]]
    usable_unhealthy: frozenset[str]
    demoted: frozenset[str]


EMPTY_VIEW = CircuitView(MappingProxyType({}), frozenset(), frozenset())


class Breakers:
    """One replica's circuits. Not thread-safe (the event loop's only); `clock` returns unix seconds, the
    clock health observations are stamped with. The view is cached until the next change or the next
    moment one of its times (a trial due, a demotion over) passes."""

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._circuits: dict[str, Circuit] = {}
        self._unhealthy_since: dict[str, float] = {}  # when the worker's current unhealthy verdict began
        self._view: CircuitView = EMPTY_VIEW
        self._valid_until = math.inf

    def set_unhealthy(self, unhealthy_at: Mapping[str, float]) -> None:
        """The snapshot's unhealthy backends and their observations' times; a verdict that goes on keeps
        the time it began, so one answer seen after that start outweighs every later repeat of it."""
        since = {name: self._unhealthy_since.get(name, at) for name, at in unhealthy_at.items()}
        if since != self._unhealthy_since:
            self._unhealthy_since = since
            self._changed()

    def circuit(self, name: str) -> Circuit:
        return self._circuits.get(name) or Circuit()

    def _health_open(self, name: str, c: Circuit) -> bool:
        since = self._unhealthy_since.get(name)
        return since is not None and (c.last_success is None or c.last_success < since)

    def view(self) -> CircuitView:
        if not self._circuits and not self._unhealthy_since:
            return EMPTY_VIEW
        now = self._clock()
        if now < self._valid_until:
            return self._view
        view, until = self._build(now)
        # rebuilt at least every VIEW_TTL while anything is open, so "next trial in" stays about right
        self._view, self._valid_until = view, min(until, now + VIEW_TTL_SECONDS) if view.open else until
        return view

    def _build(self, now: float) -> tuple[CircuitView, float]:
        for name in [n for n, c in self._circuits.items()
                     if c == Circuit(last_success=c.last_success) and n not in self._unhealthy_since]:
            del self._circuits[name]  # closed, no failures, no verdict to weigh it against: forget
        open_: dict[str, tuple[str, float]] = {}
        usable: set[str] = set()
        demoted: set[str] = set()
        until = math.inf
        for name in {*self._circuits, *self._unhealthy_since}:
            c = self.circuit(name)
            health_open = self._health_open(name, c)
            wait = admission(c, now)
            if wait is not None:
                open_[name] = (f"circuit open: {c.reason}; next trial in {wait:.1f} s", wait)
                until = min(until, c.retry_at)
                continue
            trial = trial_due(c, now, health_open)
            if name in self._unhealthy_since and (trial or not health_open):
                usable.add(name)  # a trial is due, or it answered here since the worker's verdict began
            if trial:
                demoted.add(name)
            elif c.demoted_until > now:
                until = min(until, c.demoted_until)
                demoted.add(name)
        if not open_ and not usable and not demoted:
            return EMPTY_VIEW, until
        return CircuitView(MappingProxyType(open_), frozenset(usable), frozenset(demoted)), until

    def _changed(self) -> None:
        self._valid_until = -math.inf

    def begin(self, name: str) -> bool:
        """An attempt on `name` is about to start; False when its circuit refuses it (a trial already runs)."""
        c = self.circuit(name)
        new, ok = begin(c, self._clock(), self.settings, self._health_open(name, c))
        if new is not c:
            self._circuits[name] = new
            self._changed()
        return ok

    def succeeded(self, name: str) -> None:
        if name in self._circuits or name in self._unhealthy_since:
            self._circuits[name] = succeeded(self.circuit(name), self._clock())
            self._changed()

    def failed(self, name: str, why: str) -> None:
        self._circuits[name] = failed(self.circuit(name), self._clock(), self.settings, why)
        self._changed()

    def rate_limited(self, name: str, retry_after: float | None) -> None:
        self._circuits[name] = rate_limited(self.circuit(name), self._clock(), self.settings, retry_after)
        self._changed()

    def retry_after(self, names: Iterable[str]) -> int | None:
        """Whole seconds (>= 1) until the soonest of these backends may be tried again; None if none is open."""
        now = self._clock()
        waits = [w for n in names if (w := admission(self.circuit(n), now)) is not None]
        return max(1, math.ceil(min(waits) - 1e-6)) if waits else None
