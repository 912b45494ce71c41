"""Render decisions: the explain trace (admin dry run, `X-Nexus-Explain`) and the 503 context.

Both are plain JSON-ready dicts built from a decision, never from the live intent, so what is
explained is exactly what was decided.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nexus.core.pipeline import analyzer, budget, circuit, privacy, quality, scheduler, tier
from nexus.core.pipeline.intent import Decision, Queue, Reject, RejectionReason, Route

__all__ = ["ACTIONABILITY", "explain", "rejection_context", "waiting_helps"]

# Which exclusion a client or operator can most readily lift: a request header first, then waiting
# for a backend to recover, then changing the request, then an operator's budget or policy change.
ACTIONABILITY = (tier.NAME, scheduler.NAME, circuit.NAME, quality.NAME, analyzer.NAME, budget.NAME, privacy.NAME)
_RANK = {name: i for i, name in enumerate(ACTIONABILITY)}


def _policy(decision: Decision) -> dict[str, Any] | None:
    p = decision.policy
    if p is None:
        return None
    return {
        "model_pattern": p.model_pattern,
        "privacy": p.privacy.value,
        "min_tier": p.min_tier,
        "max_cost_per_request": p.max_cost_per_request,
        "fallback_allowed": p.fallback_allowed,
    }


def _grouped(reasons: Iterable[RejectionReason]) -> dict[str, list[dict[str, str]]]:
    groups: dict[str, list[dict[str, str]]] = {}
    for r in reasons:
        groups.setdefault(r.reconciler, []).append(r.as_dict())
    return groups


def waiting_helps(reasons: Iterable[RejectionReason]) -> bool:
    """True when some exclusion lifts by itself: a failing or unhealthy backend may recover."""
    return any(r.reconciler in (quality.NAME, circuit.NAME) or "unhealthy" in r.reason for r in reasons)


def rejection_context(decision: Reject, *, retry_after_seconds: float | None = None) -> dict[str, Any]:
    reasons = decision.reasons
    ranked = sorted(reasons, key=lambda r: _RANK.get(r.reconciler, len(_RANK)))
    ctx: dict[str, Any] = {
        "requested_model": decision.requested_model,
        "resolved_model": decision.model,
        "rejection_reasons": [r.as_dict() for r in reasons],
        "reasons_by_reconciler": _grouped(reasons),
        "suggested_action": ranked[0].suggested_action if ranked else None,
        "available_backends": list(decision.available_backends),
        "budget_status": decision.budget_status.value,
    }
    if decision.error:
        ctx["error"] = decision.error
    if decision.privacy_required is not None:
        ctx["privacy_zone_required"] = decision.privacy_required.value
    if decision.required_tier is not None:
        ctx["required_tier"] = decision.required_tier
    if retry_after_seconds is not None and waiting_helps(reasons):
        ctx["retry_after_seconds"] = retry_after_seconds
    return ctx


def explain(decision: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requested_model": decision.requested_model,
        "resolved_model": decision.model,
        "matched_policy": _policy(decision),
        "budget_status": decision.budget_status.value,
        "warnings": list(decision.warnings),
        "steps": [
            {
                "reconciler": s.reconciler,
                "excluded": [r.as_dict() for r in s.excluded],
                "remaining": s.remaining,
                "duration_us": round(s.duration_us, 2),
            }
            for s in decision.trace
        ],
        "rejection_reasons": [r.as_dict() for r in decision.reasons],
    }
    if isinstance(decision, Route):
        out["decision"] = "route"
        out["backend"] = decision.backend.name
        out["route_reason"] = decision.route_reason
        out["alternatives"] = [b.name for b in decision.alternatives]
        out["scores"] = {k: round(v, 6) for k, v in sorted(decision.scores.items())}
        out["cost_estimate_usd"] = decision.cost_estimate
    elif isinstance(decision, Queue):
        out["decision"] = "queue"
        out["queue_reason"] = decision.reason
        out["candidates"] = [b.name for b in decision.candidates]
    else:
        out["decision"] = "reject"
        out["not_found"] = decision.not_found
        out["context"] = rejection_context(decision)
    if decision.privacy_required is not None:
        out["privacy_zone_required"] = decision.privacy_required.value
    return out
