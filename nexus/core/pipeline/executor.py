"""The pipeline executor: run the reconcilers in order over one intent and turn it into a decision.

Reconcilers are modules (or any object) with a `NAME` and a pure `reconcile(intent, snapshot)`; the
default order is the contract's. Timings are taken only when a trace is asked for, so the hot path pays
nothing for explainability it does not use. The executor itself reads no clock otherwise, does no I/O
and draws no randomness.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter_ns
from typing import Protocol

from nexus.core.model import HealthState
from nexus.core.pipeline import analyzer, budget, circuit, privacy, quality, scheduler, tenant, tier
from nexus.core.pipeline.intent import Decision, Queue, Reject, Route, RoutingIntent, TraceStep
from nexus.core.snapshot import Snapshot

__all__ = ["DEFAULT_RECONCILERS", "FILTER_RECONCILERS", "Reconciler", "decide"]


class Reconciler(Protocol):
    NAME: str

    def reconcile(self, intent: RoutingIntent, snapshot: Snapshot) -> None: ...


FILTER_RECONCILERS: tuple[Reconciler, ...] = (privacy, budget, tier, quality, circuit)  # type: ignore[assignment]
DEFAULT_RECONCILERS: tuple[Reconciler, ...] = (analyzer, tenant, *FILTER_RECONCILERS, scheduler)  # type: ignore[assignment]


def decide(
    intent: RoutingIntent,
    snapshot: Snapshot,
    *,
    trace: bool = False,
    reconcilers: Sequence[Reconciler] = DEFAULT_RECONCILERS,
) -> Decision:
    steps: list[TraceStep] = []
    if trace:
        for r in reconcilers:
            seen = len(intent.reasons)
            t0 = perf_counter_ns()
            r.reconcile(intent, snapshot)
            dt = (perf_counter_ns() - t0) / 1000.0
            steps.append(TraceStep(r.NAME, tuple(intent.reasons[seen:]), len(intent.candidates), dt))
    else:
        for r in reconcilers:
            r.reconcile(intent, snapshot)
    return _conclude(intent, snapshot, tuple(steps))


def _conclude(intent: RoutingIntent, snapshot: Snapshot, steps: tuple[TraceStep, ...]) -> Decision:
    common = {
        "model": intent.resolved_model,
        "requested_model": intent.requested_model,
        "policy": intent.policy,
        "budget_status": intent.budget_status,
        "budget_scope": intent.budget_scope,
        "reasons": tuple(intent.reasons),
        "warnings": tuple(intent.warnings),
        "trace": steps,
    }
    if intent.error is not None or not intent.model_known or not intent.candidates:
        serving = snapshot.by_model.get(intent.resolved_model, ())
        return Reject(
            **common,
            not_found=intent.error is None and not intent.model_known,
            available_backends=tuple(b.name for b in serving if b.health is not HealthState.UNHEALTHY),
            privacy_required=intent.privacy_required,
            required_tier=intent.min_tier,
            error=intent.error,
        )
    if intent.queue_reason is not None:
        return Queue(
            **common,
            reason=intent.queue_reason,
            candidates=tuple(intent.ordered),
            privacy_required=intent.privacy_required,
            priority=intent.priority,
        )
    best = intent.ordered[0]
    return Route(
        **common,
        backend=best,
        alternatives=tuple(intent.ordered[1:]),
        route_reason=intent.route_reason,
        cost_estimate=budget.estimate_cost(intent, snapshot, best.name),
        privacy_required=intent.privacy_required,
        scores=intent.scores,
    )
