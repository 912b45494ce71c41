"""Request and response bodies of the admin API (`XCreate` / `XUpdate` / `XPublic`).

Write bodies reuse the config models (`BackendConfig`, `PolicyConfig`, `BudgetConfig`, ...), so a value
is accepted or refused exactly as it would be in nexus.toml. Public bodies carry no secrets: a backend
shows the NAME of its key variable and whether it is set, never the key.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from nexus.core.config import BackendConfig, BudgetConfig, PolicyConfig, RoutingConfig, WeightsConfig
from nexus.core.model import Strategy

__all__ = [
    "BackendCreate",
    "BackendPublic",
    "BudgetPublic",
    "BudgetUpdate",
    "ExplainRequest",
    "HealthPublic",
    "NodePublic",
    "RoutingPublic",
    "RoutingUpdate",
    "WriteResult",
]


class BackendCreate(BackendConfig):
    """A backend as PUT to /backends/{name}; the name comes from the path (a body name must match)."""

    name: str | None = None  # type: ignore[assignment]


class BackendPublic(BackendConfig):
    api_key_configured: bool = False
    zone_effective: str = ""


class WriteResult(BaseModel):
    version: int


def _update_of(config: type[BaseModel], name: str, doc: str, fields: tuple[str, ...], **extra: Any) -> Any:
    """An update body for `config`: each of `fields` optional (None: left as it is) with the config model's
    own type, bounds and validators, so the admin API cannot drift from what nexus.toml accepts."""
    optional: dict[str, Any] = {}
    for field in fields:
        info = config.model_fields[field]
        kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        optional[field] = (kind | None, None)
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **optional, **extra)


RoutingUpdate = _update_of(
    RoutingConfig,
    "RoutingUpdate",
    "Fields given replace the current ones; fields left out stay as they are.",
    ("strategy", "max_retries", "aliases", "fallbacks", "weights"),
)


class RoutingPublic(BaseModel):
    strategy: Strategy
    max_retries: int
    aliases: dict[str, str]
    fallbacks: dict[str, list[str]]
    weights: WeightsConfig
    policies: list[PolicyConfig]


BudgetUpdate = _update_of(
    BudgetConfig,
    "BudgetUpdate",
    "Fields given replace the current ones (`soft_limit_percent` takes 0.75 or 75).",
    ("monthly_limit_usd", "soft_limit_percent", "hard_limit_action", "reset_day", "reconciliation_interval_secs"),
    unlimited=(bool, Field(default=False, description="true removes the limit (monthly_limit_usd = null)")),
)


class BudgetPublic(BudgetConfig):
    scope: str
    reset_day: int  # the day this budget's periods start on, inherited or its own
    reset_day_inherited: bool = Field(description="a key budget without its own reset_day follows the global one")
    period: str
    period_ends_at: float = Field(description="unix seconds at which the current period ends")
    spend_usd: float
    status: str
    utilization: float
    remaining_usd: float | None


class HealthPublic(BaseModel):
    name: str
    type: str
    zone: str
    health: str
    checked_at: float | None
    latency_ema_ms: float | None
    models: list[str]
    quality: dict[str, Any] | None
    # why routing excludes this backend on the admin process although it is configured (a key variable unset)
    unusable: str | None = None


class NodePublic(BaseModel):
    node: str
    status: str
    last_seen_seconds: float
    snapshot_version: int
    snapshot_age_seconds: float | None
    observed_age_seconds: float | None = Field(
        default=None, description="age of the newest health observation in the node's snapshot (workers' pulse)"
    )
    inflight: int
    queue_depth: int
    telemetry_buffered: int
    redis_ok: bool
    draining: bool
    snapshot_error: str | None = Field(
        default=None, description="why the newest desired state could not be built (the node keeps its last good one)"
    )
    failing_version: int | None = None
    state_lost: str | None = Field(
        default=None, description="Redis lost the shared state: the node routes on its snapshot and restores it"
    )


class ExplainRequest(BaseModel):
    """A chat-completions body plus the request headers that steer routing."""

    request: dict[str, Any] = Field(description="an OpenAI chat-completions request body")
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. {'X-Nexus-Flexible': 'true'}")
    api_key_id: str | None = Field(
        default=None, max_length=128,
        description="the key id whose constraints (a managed key_...: models, privacy, tier, priority, budgets) apply",
    )
