"""Bodies of `/admin/v1/keys` and `/admin/v1/teams` (`KeyCreate` / `KeyUpdate` / `KeyPublic`, `TeamPut` /
`TeamPublic`). Limits are `nexus.core.tenancy.TenantLimits`, so a value is refused here exactly as in nexus.toml.
No public body carries a digest; the secret appears once, in the answer to create and rotate (`KeyCreated`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nexus.core.tenancy import MAX_ROTATION_GRACE_SECONDS, TEAM_NAME_PATTERN, TenantLimits

__all__ = ["KeyCreate", "KeyCreated", "KeyPublic", "KeyUpdate", "RotateRequest", "TeamPublic", "TeamPut", "Usage"]

_Meta = dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]]


def _unix(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ValueError("give unix seconds or an ISO 8601 time such as 2027-01-31T00:00:00Z") from None
    return value


class KeyCreate(TenantLimits):
    name: str = Field(min_length=1, max_length=200)
    team: str | None = Field(default=None, pattern=TEAM_NAME_PATTERN)
    expires_at: float | None = Field(default=None, ge=0, le=2**40, description="unix seconds or ISO 8601")
    metadata: _Meta = Field(default_factory=dict, max_length=32)

    _expires = field_validator("expires_at", mode="before")(classmethod(lambda cls, v: _unix(v)))


class KeyUpdate(KeyCreate):
    """Fields given replace the current ones (null clears a limit); fields left out stay as they are."""

    name: str | None = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(
        default=3600.0, ge=0, le=MAX_ROTATION_GRACE_SECONDS, description="how long the old secret stays valid"
    )


class Usage(BaseModel):
    spend_usd: float = 0.0
    period: str = ""
    budget_status: str | None = None
    rpm_used: int | None = None  # the last 60 s, cluster-wide (None: no rpm limit)
    tpm_used: int | None = None


class KeyPublic(KeyCreate):
    id: str
    created_at: float
    revoked_at: float | None = None
    status: str = Field(description="active, revoked or expired")
    previous_valid_until: float | None = Field(default=None, description="a rotated key's old secret works until")
    usage: Usage


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret: shown once, never stored")


class TeamPut(TenantLimits):
    metadata: _Meta = Field(default_factory=dict, max_length=32)


class TeamPublic(TeamPut):
    name: str
    keys: int = Field(description="keys of the team (revoked ones included)")
    usage: Usage
