"""The X-Nexus-* response headers of a routed answer (docs/http-contract.md lists them)."""

from __future__ import annotations

from nexus.core.model import Backend, BudgetStatus
from nexus.core.pipeline import Decision, Route
from nexus.core.snapshot import Snapshot
from nexus.router_node.asgi import Headers
from nexus.router_node.billing import estimated_cost
from nexus.router_node.inflight import Attempt, InFlight

__all__ = ["SSE_HEADERS", "budget_headers", "route_headers", "route_reason"]

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def budget_headers(decision: Decision, snap: Snapshot) -> Headers:
    if decision.budget_status is BudgetStatus.NORMAL or decision.budget_scope is None:
        return [(b"x-nexus-budget-status", decision.budget_status.value.encode())]
    state = snap.budgets[decision.budget_scope]
    remaining = state.remaining()
    out = [
        (b"x-nexus-budget-status", decision.budget_status.value.encode()),
        (b"x-nexus-budget-utilization", f"{state.utilization():.4f}".encode()),
    ]
    if remaining is not None:
        out.append((b"x-nexus-budget-remaining", f"{remaining:.4f}".encode()))
    return out


def route_reason(decision: Route, attempt: Attempt) -> str:
    if attempt.n > 0:
        return "failover"
    return "fallback" if attempt.fallback is not None else decision.route_reason


def route_headers(r: InFlight, decision: Route, snap: Snapshot, attempt: Attempt) -> Headers:
    backend: Backend = attempt.backend
    estimate = estimated_cost(decision, backend, snap, r.req.requirements)
    h: Headers = [
        (b"x-nexus-request-id", r.request_id.encode()),
        (b"x-nexus-backend", backend.name.encode()),
        (b"x-nexus-backend-type", backend.kind.encode()),
        (b"x-nexus-privacy-zone", backend.zone.value.encode()),
        (b"x-nexus-route-reason", route_reason(decision, attempt).encode()),
        (b"x-nexus-cost-estimated", f"{estimate:.6f}".encode()),
        *budget_headers(decision, snap),
    ]
    if attempt.fallback is not None:
        h.append((b"x-nexus-fallback-model", attempt.fallback.encode()))
    if decision.warnings:
        h.append((b"x-nexus-warning", "; ".join(decision.warnings).encode("ascii", "replace")))
    return h
