"""The working state of one routing decision, and the decisions it ends in.

`RoutingIntent` accumulates constraints as it passes through the reconcilers. Its API only narrows:
`exclude` moves candidates out with a `RejectionReason`, and nothing moves one back, so a reconciler
cannot re-admit what another excluded. Candidates stay in snapshot order (sorted by name), which keeps
every decision deterministic for the same snapshot and injected sources.

A decision is `Route` (a backend plus the ordered alternatives for failover), `Queue` (wait for
capacity or a loading backend) or `Reject` (nothing viable; `not_found` when the model is unknown).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nexus.core.model import Backend, BudgetStatus, Policy, TierMode, Zone
from nexus.core.tenancy import Tenant

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "Decision",
    "Queue",
    "Reject",
    "RejectionReason",
    "Requirements",
    "Route",
    "RoutingIntent",
    "TraceStep",
]


DEFAULT_OUTPUT_TOKENS = 512  # the completion a request without max_tokens is estimated (and billed) at


@dataclass(frozen=True, slots=True)
class Requirements:
    """What the request needs from a backend, extracted once before the pipeline."""

    vision: bool = False
    tools: bool = False
    json_mode: bool = False
    input_tokens: int = 0
    max_output_tokens: int | None = None
    stream: bool = False
    json_schema: bool = False  # response_format json_schema (json_mode is set too)
    choices: int = 1  # n
    logprobs: bool = False  # logprobs or top_logprobs asked
    completions: bool = False  # a legacy text completion (POST /v1/completions)

    @property
    def output_estimate(self) -> int:
        """Completion tokens to estimate: `max_tokens`, else `DEFAULT_OUTPUT_TOKENS`."""
        return self.max_output_tokens if self.max_output_tokens is not None else DEFAULT_OUTPUT_TOKENS


@dataclass(frozen=True, slots=True)
class RejectionReason:
    agent_id: str
    reconciler: str
    reason: str
    suggested_action: str

    def as_dict(self) -> dict[str, str]:
        return {
            "agent_id": self.agent_id,
            "reconciler": self.reconciler,
            "reason": self.reason,
            "suggested_action": self.suggested_action,
        }


@dataclass(frozen=True, slots=True)
class TraceStep:
    reconciler: str
    excluded: tuple[RejectionReason, ...]
    remaining: int
    duration_us: float


class RoutingIntent:
    """Mutable accumulator for one decision; only the pipeline's reconcilers touch it."""

    __slots__ = (
        "api_key_id",
        "budget_exhausted",
        "budget_scope",
        "budget_status",
        "candidates",
        "circuits_open",
        "cost_estimates",
        "demoted",
        "error",
        "excluded",
        "failing_here",
        "load",
        "min_tier",
        "model_forbidden",
        "model_known",
        "ordered",
        "policy",
        "priority",
        "privacy_required",
        "queue_reason",
        "reasons",
        "request_id",
        "requested_model",
        "requirements",
        "resolved_model",
        "rng",
        "route_reason",
        "scores",
        "sequence",
        "slow",
        "tenant",
        "tier_mode",
        "usable_unhealthy",
        "warnings",
    )

    def __init__(
        self,
        model: str,
        requirements: Requirements | None = None,
        *,
        request_id: str = "",
        tier_mode: TierMode | None = None,
        priority: str = "normal",
        api_key_id: str | None = None,
        load: Mapping[str, int] | None = None,
        rng: random.Random | None = None,
        sequence: int = 0,
        privacy_required: Zone | None = None,
        budget_exhausted: bool = False,
        failing_here: frozenset[str] = frozenset(),
        circuits_open: Mapping[str, tuple[str, float]] | None = None,
        usable_unhealthy: frozenset[str] = frozenset(),
        tenant: Tenant | None = None,
    ) -> None:
        self.request_id = request_id
        self.requested_model = model
        self.resolved_model = model
        self.requirements = requirements or Requirements()
        self.tier_mode = tier_mode or TierMode.STRICT
        self.priority = priority
        self.api_key_id = api_key_id if tenant is None else tenant.key_id
        # the request's key with its team's limits (nexus.core.tenancy): TenantReconciler, Privacy, Budget read it
        self.tenant = tenant
        self.model_forbidden = False  # the key may not use the model: not found, for this key
        self.load = load
        self.rng = rng
        self.sequence = sequence
        self.candidates: list[Backend] = []
        self.excluded: dict[str, Backend] = {}
        self.reasons: list[RejectionReason] = []
        self.model_known = False
        self.error: str | None = None
        self.policy: Policy | None = None
        # preset by a caller that must carry an earlier decision's privacy over (fallback chains)
        self.privacy_required: Zone | None = privacy_required
        # set by a caller whose budget reservation was refused: no room left for this request
        self.budget_exhausted = budget_exhausted
        self.budget_status = BudgetStatus.NORMAL
        self.budget_scope: str | None = None
        self.cost_estimates: dict[str, float] = {}
        self.min_tier: int | None = None
        self.slow: frozenset[str] = frozenset()
        # backends this router node saw fail several times in a row just now (passive health), as given by
        # the caller; the QualityReconciler turns it into `demoted` (tried last, never excluded)
        self.failing_here = failing_here
        self.demoted: frozenset[str] = frozenset()
        # this node's circuit breakers (nexus/router_node/breaker.py): backends it must not try now (reason, seconds
        # to the next trial), and backends the health worker calls unhealthy that it may use (answered since,
        # or a trial is due); the CircuitReconciler and the RequestAnalyzer read them
        self.circuits_open: Mapping[str, tuple[str, float]] = circuits_open or {}
        self.usable_unhealthy = usable_unhealthy
        self.scores: dict[str, float] = {}
        self.warnings: list[str] = []
        # set by the scheduler, the last reconciler
        self.ordered: list[Backend] = []
        self.route_reason = ""
        self.queue_reason: str | None = None

    def exclude(self, backends: Iterable[Backend], reconciler: str, reason: str, action: str) -> None:
        """Move `backends` out of the candidates, each with one reason. Never re-admits."""
        gone: set[str] = set()
        for b in backends:
            gone.add(b.name)
            self.excluded[b.name] = b
            self.reasons.append(RejectionReason(b.name, reconciler, reason, action))
        if gone:
            self.candidates = [b for b in self.candidates if b.name not in gone]

    def exclude_each(self, items: Iterable[tuple[Backend, str, str]], reconciler: str) -> None:
        """Like `exclude`, with a reason and action per backend."""
        gone: set[str] = set()
        for b, reason, action in items:
            gone.add(b.name)
            self.excluded[b.name] = b
            self.reasons.append(RejectionReason(b.name, reconciler, reason, action))
        if gone:
            self.candidates = [b for b in self.candidates if b.name not in gone]


@dataclass(frozen=True, slots=True)
class _DecisionBase:
    model: str
    requested_model: str
    policy: Policy | None
    budget_status: BudgetStatus
    budget_scope: str | None
    reasons: tuple[RejectionReason, ...]
    warnings: tuple[str, ...]
    trace: tuple[TraceStep, ...]


@dataclass(frozen=True, slots=True)
class Route(_DecisionBase):
    backend: Backend
    alternatives: tuple[Backend, ...]
    route_reason: str
    cost_estimate: float
    privacy_required: Zone | None = None
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def ordered(self) -> tuple[Backend, ...]:
        """The chosen backend then the failover alternatives, all within this decision's constraints."""
        return (self.backend, *self.alternatives)


@dataclass(frozen=True, slots=True)
class Queue(_DecisionBase):
    reason: str
    candidates: tuple[Backend, ...]
    privacy_required: Zone | None = None
    priority: str = "normal"  # the queue priority the request waits with (the key's caps the header's)


@dataclass(frozen=True, slots=True)
class Reject(_DecisionBase):
    not_found: bool
    available_backends: tuple[str, ...]
    privacy_required: Zone | None
    required_tier: int | None
    error: str | None = None


Decision = Route | Queue | Reject
