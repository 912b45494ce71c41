"""The routing pipeline: RequestAnalyzer -> Tenant -> Privacy -> Budget -> Tier -> Quality -> Circuit -> Scheduler.

Pure functions of (intent, snapshot). `decide` runs them; `explain` renders a decision for humans and
for the 503 body. See docs/architecture.md#a-request and docs/http-contract.md#the-503-body.
"""

from nexus.core.pipeline.executor import DEFAULT_RECONCILERS, FILTER_RECONCILERS, decide
from nexus.core.pipeline.explain import explain, rejection_context
from nexus.core.pipeline.intent import (
    Decision,
    Queue,
    Reject,
    RejectionReason,
    Requirements,
    Route,
    RoutingIntent,
    TraceStep,
)
from nexus.core.pipeline.requirements import extract_requirements

__all__ = [
    "DEFAULT_RECONCILERS",
    "FILTER_RECONCILERS",
    "Decision",
    "Queue",
    "Reject",
    "RejectionReason",
    "Requirements",
    "Route",
    "RoutingIntent",
    "TraceStep",
    "decide",
    "explain",
    "extract_requirements",
    "rejection_context",
]
