"""One in-flight inference request: its decision, its budget reservation, its attempts and its records.

Invariants:
- The reservation (what admission took from a budget lease, `nexus.core.ledger.Reservation`) is released
  exactly once, by exactly one telemetry record: the answer's, else the last failed attempt's, else (the
  request cancelled, the client gone, an exception, a decision with no attempt) a release record written by
  `close`, which the handler calls on every path. A new reservation is taken only after the previous one went.
- A failed attempt before the first byte leaves a record `<id>:<n>`; the last one is held back until the
  request ends, so that when every candidate fails it is the one that carries the reservation.
- The records are built here, from the request's own facts, as `TelemetryRecord`s (its fields are written
  once, in nexus.core.telemetry_store); `sink` takes them (the node's telemetry buffer).

Billing: prices per 1M tokens come from the snapshot (`Snapshot.price`; local backends 0). A backend that
sent no valid usage is billed on the estimate: the prompt estimate, and the answer's text length (about
`CHARS_PER_TOKEN` characters a token), else `max_tokens`, else the default output estimate
(`Requirements.output_estimate`). A stream cut off before its usage is billed for the prompt plus the
events delivered (about one token each), not the whole estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nexus.core.allowance import Ticket
from nexus.core.gateway_errors import ClientDisconnected, UpstreamError
from nexus.core.ledger import NO_RESERVATION, Reservation
from nexus.core.model import Backend
from nexus.core.pipeline import Decision, Requirements, Route
from nexus.core.pipeline.requirements import CHARS_PER_TOKEN
from nexus.core.snapshot import Snapshot
from nexus.core.telemetry_store import Outcome, TelemetryRecord
from nexus.core.usage import Usage
from nexus.router_node.fronts import RequestInfo
from nexus.router_node.parsing import ParsedRequest
from nexus.router_node.rates import NO_TICKET
from nexus.router_node.upstream import Exchange

__all__ = ["Attempt", "InFlight", "cost", "estimated_cost", "estimated_usage"]


def cost(snap: Snapshot, backend: Backend, model: str, usage: Usage) -> float:
    pin, pout = snap.price(backend.name, model)
    return (usage.prompt_tokens * pin + usage.completion_tokens * pout) / 1_000_000.0


def estimated_cost(decision: Route, backend: Backend, snap: Snapshot, req: Requirements) -> float:
    """The estimate shown for `backend` (X-Nexus-Cost-Estimated): the decision's own for its first choice."""
    if backend.name == decision.backend.name:
        return decision.cost_estimate
    return cost(snap, backend, decision.model, Usage(req.input_tokens, req.output_estimate))


def estimated_usage(req: Requirements, ex: Exchange) -> Usage:
    """What to bill an answer whose backend reported no valid usage."""
    if ex.status != 200:
        return Usage(req.input_tokens, 0)
    out = -(-ex.completion_chars // CHARS_PER_TOKEN) if ex.completion_chars else req.output_estimate
    return Usage(req.input_tokens, out)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one candidate backend: the n-th of its decision (0 first), for the requested model or a
    fallback."""

    backend: Backend
    n: int
    model: str
    fallback: str | None
    t0: float = field(default_factory=time.perf_counter)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0


@dataclass(slots=True)
class InFlight:
    req: ParsedRequest
    node_id: str
    clock: Callable[[], float]  # the node's wall clock (records' timestamps)
    sink: Callable[[TelemetryRecord], None]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = 0.0  # unix time, by `clock`
    first: Decision | None = None  # the decision for the requested model (fallbacks carry its privacy over)
    failures: list[UpstreamError] = field(default_factory=list)  # every attempt that failed before answering
    reservation: Reservation = NO_RESERVATION
    record: TelemetryRecord | None = None  # the answer's record, once written
    ticket: Ticket = NO_TICKET  # what admission took from the tenant's rate allowances (nexus/router_node/rates.py)
    lifecycle: str | None = None  # what a lifecycle operation did to this request's model (docs/fleet.md)
    _reserved_for: Route | None = None  # the decision the reservation was taken for
    _held: tuple[Attempt, float] | None = None  # the last failed attempt (and its milliseconds), not written yet

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def team(self) -> str | None:
        tenant = self.req.tenant
        return tenant.team if tenant is not None else None

    @property
    def used_tokens(self) -> int | None:
        """Prompt + completion tokens of the answer (what TPM settles to); None when nothing answered."""
        rec = self.record
        return rec.prompt_tokens + rec.completion_tokens if rec is not None else None

    @property
    def info(self) -> RequestInfo:
        """What the front end renders the answer with."""
        return RequestInfo(self.request_id, self.req.model, self.started, self.req.client)

    # -- the reservation ------------------------------------------------------------------------------
    def hold(self, reservation: Reservation, decision: Route) -> None:
        """Admission took `reservation` for `decision`; anything held from before is released first."""
        self._release("released")
        self.reservation, self._reserved_for = reservation, decision

    def close(self) -> None:
        """The request ended, whatever the path: nothing it holds outlives it."""
        self._release("cancelled")

    def _claim(self) -> Reservation:
        taken, self.reservation = self.reservation, NO_RESERVATION
        return taken

    def _release(self, why: str) -> None:
        """Write what is held: the held failure carries the reservation; with none, a release record does."""
        if self._held is not None:
            (attempt, ms), self._held = self._held, None
            self.sink(self._failure(attempt.backend, attempt.model, attempt.n, ms, self._claim()))
        if self.reservation and self._reserved_for is not None:
            route = self._reserved_for
            self.sink(self._failure(route.backend, route.model, why, 0.0, self._claim()))

    # -- records --------------------------------------------------------------------------------------
    def _failure(self, backend: Backend, model: str, attempt: int | str, latency_ms: float,
                 reservation: Reservation = NO_RESERVATION) -> TelemetryRecord:
        return TelemetryRecord(
            id=f"{self.request_id}:{attempt}", ts=self.clock(), node=self.node_id, backend=backend.name,
            backend_type=backend.kind, model=model, key=self.req.key_id, team=self.team, latency_ms=latency_ms,
            outcome=Outcome.UPSTREAM_ERROR, status=502, reserved_usd=reservation.amount,
            reserved_periods=dict(reservation.periods),
        )

    def _write_held(self) -> None:
        if self._held is not None:
            (attempt, ms), self._held = self._held, None
            self.sink(self._failure(attempt.backend, attempt.model, attempt.n, ms))

    def attempt_failed(self, attempt: Attempt, err: UpstreamError) -> None:
        """The attempt failed before the first byte: its record is held (the previous one is written)."""
        self.failures.append(err)
        self._write_held()
        self._held = (attempt, attempt.elapsed_ms())

    def candidates_exhausted(self) -> None:
        """No candidate of the current decision answered: its last failure carries the reservation."""
        if self._held is not None:
            self._release("released")

    def answered(self, attempt: Attempt, *, usage: Usage, estimated: bool, cost: float, outcome: str, status: int,
                 ttfb_ms: float | None, partial: bool = False) -> None:
        """The attempt answered (or the client left while it ran): the request's one record, carrying the
        reservation."""
        self._write_held()
        taken = self._claim()
        self.record = TelemetryRecord(
            id=self.request_id, ts=self.started, node=self.node_id, backend=attempt.backend.name,
            backend_type=attempt.backend.kind, model=attempt.model, requested_model=self.req.model,
            key=self.req.key_id, team=self.team, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=cost, estimated=estimated, latency_ms=attempt.elapsed_ms(), ttfb_ms=ttfb_ms, outcome=outcome,
            status=status, stream=self.req.stream, fallback_model=attempt.fallback, retries=attempt.n,
            reserved_usd=taken.amount, reserved_periods=dict(taken.periods), partial=partial,
        )
        self.sink(self.record)

    # -- the client -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def until_client_leaves(self) -> Iterator[None]:
        """Run the block as this request's cancellable work: if the client's connection is lost meanwhile,
        the block is cancelled (an upstream call stops, a queue wait ends) and ClientDisconnected raised."""
        watch = self.req.watch
        if watch is None:  # served by something other than nexus/router_node/protocol.py: nothing to hook
            yield
            return
        task = asyncio.current_task()
        watch.task = task
        try:
            yield
        except asyncio.CancelledError:
            if not watch.gone or task is None:
                raise
            task.uncancel()
            raise ClientDisconnected("the client went away before the answer was ready") from None
        finally:
            watch.task = None
