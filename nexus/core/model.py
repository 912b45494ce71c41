"""Domain model shared by every Nexus process.

The enums name the closed vocabularies of the contract (backend types, zones, health states,
budget statuses, routing strategies). The frozen dataclasses are the in-process view that the
snapshot and the pipeline work on; pydantic models in `nexus.core.config` are the boundary
(TOML, admin API bodies, Redis values) and are converted into these once, when a snapshot is built.

Invariants:
- `BackendType` is the list of backend type names; what each type is (its wire protocol, local or cloud,
  whether it needs a key, its default zone and prices) is declared by nexus/core/adapters/registry.py,
  which derives a backend's zone in exactly one place (`zone_for`).
- Zones parse leniently here (`parse_zone`): config validation is stricter (an unknown zone in TOML is an
  error), but values that reach the model from elsewhere (an older Redis value, say) degrade to open,
  never to restricted.
- Local backends cost nothing: `ModelSpec` prices are ignored for local backend types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from nexus.core.periods import MONTHLY, PeriodRule

__all__ = [
    "Backend",
    "BackendSource",
    "BackendType",
    "BudgetState",
    "BudgetStatus",
    "HardLimitAction",
    "HealthState",
    "ModelSpec",
    "Policy",
    "PrivacyRequirement",
    "QualityStats",
    "Strategy",
    "TierMode",
    "Weights",
    "Zone",
    "parse_zone",
]


class BackendType(StrEnum):
    """The backend type names; every one has an entry in nexus/core/adapters/registry.py."""

    OLLAMA = "ollama"
    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    LMSTUDIO = "lmstudio"
    EXO = "exo"  # an exo cluster of local machines (OpenAI-compatible API)
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GOOGLE = "google"
    GENERIC = "generic"


class BackendSource(StrEnum):
    """Who wrote a backend into desired state: an operator, or the discovery job (issue 18, not built yet)."""

    STATIC = "static"
    DISCOVERED = "discovered"


class Zone(StrEnum):
    RESTRICTED = "restricted"
    OPEN = "open"


class PrivacyRequirement(StrEnum):
    RESTRICTED = "restricted"
    UNRESTRICTED = "unrestricted"


class HealthState(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    LOADING = "loading"
    UNKNOWN = "unknown"


class BudgetStatus(StrEnum):
    """Declared from least to most severe: `severity` is the position, the one ranking of the statuses
    (the worse of two scopes governs a request; the metric exports it as a number)."""

    NORMAL = "normal"
    SOFT_LIMIT = "soft_limit"
    HARD_LIMIT = "hard_limit"

    @property
    def severity(self) -> int:
        return _BUDGET_SEVERITY[self]


_BUDGET_SEVERITY = {status: i for i, status in enumerate(BudgetStatus)}


class HardLimitAction(StrEnum):
    WARN = "warn"
    BLOCK_CLOUD = "block_cloud"
    BLOCK_ALL = "block_all"


class Strategy(StrEnum):
    SMART = "smart"
    ROUND_ROBIN = "round_robin"
    PRIORITY_ONLY = "priority_only"
    RANDOM = "random"


class TierMode(StrEnum):
    STRICT = "strict"
    FLEXIBLE = "flexible"


def parse_zone(value: str | None) -> Zone | None:
    """An explicit zone, case-insensitive; None when absent. Unknown strings are open."""
    if value is None or value == "":
        return None
    try:
        return Zone(value.strip().lower())
    except ValueError:
        return Zone.OPEN


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model as one backend serves it.

    Undeclared capabilities default to what OpenAI-compatible servers commonly support: tools, JSON mode,
    JSON schemas, `n`, logprobs and text completions yes, vision no (it needs a vision model). Unknown context
    length never excludes. `lacks` is what this model on its backend cannot serve: the flags that are false plus
    the backend type's adapter limits (nexus/core/capabilities.py), computed once when the snapshot is built.
    """

    name: str
    context_length: int | None = None
    vision: bool = False
    tools: bool = True
    json_mode: bool = True
    input_usd_per_1m: float = 0.0
    output_usd_per_1m: float = 0.0
    json_schema: bool = True
    multiple_choices: bool = True
    logprobs: bool = True
    completions: bool = True
    lacks: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class QualityStats:
    """Rolled up by the quality worker from telemetry; absent means no history."""

    error_rate_1h: float = 0.0
    avg_ttfb_ms_1h: float = 0.0
    success_rate_24h: float = 1.0
    requests_1h: int = 0
    requests_24h: int = 0


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend as the pipeline sees it: desired config merged with observed state."""

    name: str
    url: str
    type: BackendType
    zone: Zone
    tier: int = 1
    priority: int = 1
    max_concurrency: int = 8
    models: dict[str, ModelSpec] = field(default_factory=dict)
    health: HealthState = HealthState.UNKNOWN
    health_at: float | None = None  # unix time of the observation an UNHEALTHY `health` comes from
    latency_ema_ms: float | None = None
    quality: QualityStats | None = None
    secret: str | None = None  # name of a secret in nexus.toml [secrets]; sent only to its hosts
    is_local: bool = False  # derived from type by the snapshot builder; a field because it is hot
    timeout_seconds: float | None = None  # per-backend upstream timeout; None: server.request_timeout_seconds
    # why no request may go to this backend although it is configured (its key's variable is unset on this
    # process): the RequestAnalyzer excludes it with this reason; None: usable
    unusable: str | None = None

    @property
    def kind(self) -> str:
        """`local` or `cloud`, as the X-Nexus-Backend-Type header says it."""
        return "local" if self.is_local else "cloud"


@dataclass(frozen=True, slots=True)
class Policy:
    model_pattern: str
    privacy: PrivacyRequirement = PrivacyRequirement.UNRESTRICTED
    min_tier: int | None = None
    max_cost_per_request: float | None = None
    fallback_allowed: bool = True
    index: int = 0  # declaration order, for the specificity tie-break


@dataclass(frozen=True, slots=True)
class Weights:
    priority: float = 50.0
    load: float = 30.0
    latency: float = 20.0


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget scope (`global` or an API key id) with the spend observed for its period."""

    scope: str
    monthly_limit_usd: float | None
    soft_limit_fraction: float = 0.75
    hard_limit_action: HardLimitAction = HardLimitAction.WARN
    spend_usd: float = 0.0
    period: str = ""  # the name of the period `spend_usd` is of
    rule: PeriodRule = MONTHLY  # how this scope's time is cut into periods

    def status(self) -> BudgetStatus:
        limit = self.monthly_limit_usd
        if limit is None:
            return BudgetStatus.NORMAL
        if self.spend_usd >= limit:
            return BudgetStatus.HARD_LIMIT
        if self.spend_usd >= limit * self.soft_limit_fraction:
            return BudgetStatus.SOFT_LIMIT
        return BudgetStatus.NORMAL

    def utilization(self) -> float:
        limit = self.monthly_limit_usd
        if not limit:
            return 1.0 if limit == 0 else 0.0
        return self.spend_usd / limit

    def remaining(self) -> float | None:
        if self.monthly_limit_usd is None:
            return None
        return max(0.0, self.monthly_limit_usd - self.spend_usd)
