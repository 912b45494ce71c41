"""Tenants: virtual client keys and teams, their limits, and how a presented key finds its tenant.

A key (`KeyConfig`) and a team (`TeamConfig`) are desired state (`DesiredConfig.keys` / `.teams`, stored in
`{config}:keys` and `{config}:teams`), validated by these models wherever they enter: nexus.toml, admin
bodies and reads from Redis. Both carry the same limits (`TenantLimits`); a request must fit its key's and
its key's team's.

Secrets are never stored: a key holds `digest`, `hmac-sha256:<hex>` of the secret under the server's key-hash
secret (`hash_key`), or `sha256:<hex>` for keys declared in nexus.toml (as `[server] api_keys` are). A rotated
key keeps its previous digest until `previous_until` (the grace period). The router node's lookup
(`TenantTable`) maps digests to compiled `Tenant`s; static `[server] api_keys` become tenants without limits.

Invariants:
- key ids (`key_<12 hex>`) and team names never contain `|` or `:` (they are budget and rate scopes inside
  Redis hash fields); a team's budget and rate scope is `team:<name>` (`team_scope`).
- `Tenant.usable(now)` is the one check of revocation and expiry; a tenant the table no longer holds is
  unknown (401) on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nexus.core.globs import Glob, GlobError, compile_glob, validate_glob

__all__ = [
    "KEY_ID_PATTERN",
    "KEY_PREFIX",
    "MAX_ROTATION_GRACE_SECONDS",
    "ROTATION_GRACE_SECONDS",
    "TEAM_NAME_PATTERN",
    "KeyConfig",
    "TeamConfig",
    "Tenant",
    "TenantLimits",
    "TenantTable",
    "build_tenants",
    "hash_key",
    "new_key_id",
    "new_key_secret",
    "owner_label",
    "sha256_digest",
    "team_scope",
]

KEY_PREFIX = "nx-"
KEY_ID_PATTERN = r"^key_[0-9a-f]{12}$"
TEAM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
ROTATION_GRACE_SECONDS = 3600.0  # the old secret of a rotated key stays valid this long (unless told otherwise)
MAX_ROTATION_GRACE_SECONDS = 7 * 86400.0
_Cfg = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
_DIGEST = r"^(hmac-sha256|sha256):[0-9a-f]{64}$"


def team_scope(team: str) -> str:
    """The budget and rate-limit scope of a team."""
    return f"team:{team}"


def owner_label(scope: str) -> str:
    """`key key_...` or `team t`: how messages name the owner of a constraint."""
    return f"team {scope.removeprefix('team:')}" if scope.startswith("team:") else f"key {scope}"


def new_key_id() -> str:
    return f"key_{_secrets.token_hex(6)}"


def new_key_secret() -> str:
    """A fresh client key: `nx-` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + _secrets.token_urlsafe(32)


def hash_key(secret: bytes, key: str | bytes) -> str:
    """The stored digest of a managed key: HMAC-SHA256 under the server's key-hash secret."""
    raw = key.encode() if isinstance(key, str) else key
    return "hmac-sha256:" + hmac.new(secret, raw, hashlib.sha256).hexdigest()


def sha256_digest(key: str | bytes) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class TenantLimits(BaseModel):
    """What a key or a team may do. Unset: no limit of that kind."""

    model_config = _Cfg

    models: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, max_length=100)
    privacy: Literal["restricted"] | None = None
    max_tier: int | None = Field(default=None, ge=1, le=5)
    priority: Literal["high", "normal"] | None = None
    rpm: int | None = Field(default=None, ge=1, le=100_000_000)
    tpm: int | None = Field(default=None, ge=1, le=100_000_000_000)
    # the fields of [routing.budget]; `nexus.core.config.BudgetConfig` (imported lazily there to avoid a cycle)
    budget: dict[str, Any] | None = None

    @field_validator("models")
    @classmethod
    def _globs(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        try:
            return [validate_glob(p) for p in v]
        except GlobError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("privacy", "priority", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        from nexus.core.config import BudgetConfig  # config imports this module

        return BudgetConfig.model_validate(v).model_dump(mode="json")


class TeamConfig(TenantLimits):
    name: str = Field(pattern=TEAM_NAME_PATTERN)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )


class KeyConfig(TenantLimits):
    id: str = Field(pattern=KEY_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    team: str | None = Field(default=None, pattern=TEAM_NAME_PATTERN)
    digest: str = Field(pattern=_DIGEST)
    previous_digest: str | None = Field(default=None, pattern=_DIGEST)
    previous_until: float | None = Field(default=None, ge=0, le=2**40)
    created_at: float = Field(default=0.0, ge=0, le=2**40)
    expires_at: float | None = Field(default=None, ge=0, le=2**40)
    revoked_at: float | None = Field(default=None, ge=0, le=2**40)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )

    @model_validator(mode="after")
    def _rotation(self) -> KeyConfig:
        if (self.previous_digest is None) != (self.previous_until is None):
            raise ValueError("previous_digest and previous_until go together (a rotation's grace period)")
        return self


@dataclass(frozen=True, slots=True)
class Tenant:
    """A resolved client key with its team's limits alongside, as requests use it."""

    key_id: str
    name: str = ""
    team: str | None = None
    models: tuple[tuple[str, Glob], ...] | None = None  # (owner scope, glob): a model must match key's and team's
    model_owners: tuple[str, ...] = ()  # scopes whose model list constrains (key id and/or team scope)
    privacy_restricted_by: str | None = None  # the scope forcing restricted privacy, if any
    max_tier: int | None = None
    max_tier_by: str | None = None
    priority: str | None = None
    rates: tuple[tuple[str, int | None, int | None], ...] = ()  # (scope, rpm, tpm) of each limited scope
    budget_scopes: tuple[str, ...] = ()  # key id and team scope, whichever has a budget
    expires_at: float | None = None
    revoked_at: float | None = None
    previous_until: float | None = None  # the digest this tenant was found by expires then (rotation grace)

    def usable(self, now: float) -> str | None:
        """Why the key cannot be used at `now` (revoked, expired, grace over), or None."""
        if self.revoked_at is not None:
            return "this API key was revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "this API key has expired"
        if self.previous_until is not None and now >= self.previous_until:
            return "this API key was rotated and its grace period is over; use the new key"
        return None

    def allows_model(self, *names: str) -> bool:
        """Whether one of `names` (the requested and resolved model) matches every owner's model list."""
        if self.models is None:
            return True
        for owner in self.model_owners:
            globs = [g for o, g in self.models if o == owner]
            if not any(g.match(n) for g in globs for n in names):
                return False
        return True

    @property
    def limited(self) -> bool:
        return bool(self.rates)


def _tenant(key: KeyConfig, team: TeamConfig | None, previous: bool) -> Tenant:
    owners: list[tuple[str, TenantLimits]] = [(key.id, key)]
    if team is not None:
        owners.append((team_scope(team.name), team))
    models = [(scope, compile_glob(p)) for scope, cfg in owners for p in (cfg.models or ())]
    model_owners = tuple(scope for scope, cfg in owners if cfg.models is not None)
    privacy_by = next((scope for scope, cfg in owners if cfg.privacy == "restricted"), None)
    tiers = [(cfg.max_tier, scope) for scope, cfg in owners if cfg.max_tier is not None]
    tier, tier_by = min(tiers) if tiers else (None, None)
    prios = [cfg.priority for _, cfg in owners if cfg.priority is not None]
    priority = "normal" if "normal" in prios else ("high" if prios else None)
    return Tenant(
        key_id=key.id,
        name=key.name,
        team=key.team,
        models=tuple(models) if model_owners else None,
        model_owners=model_owners,
        privacy_restricted_by=privacy_by,
        max_tier=tier,
        max_tier_by=tier_by,
        priority=priority,
        rates=tuple((s, c.rpm, c.tpm) for s, c in owners if c.rpm is not None or c.tpm is not None),
        budget_scopes=tuple(s for s, c in owners if c.budget is not None),
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        previous_until=key.previous_until if previous else None,
    )


class TenantTable:
    """Digest -> tenant for one desired config; built once per snapshot, read on every request."""

    __slots__ = ("by_digest", "by_id", "required")

    def __init__(self, by_digest: Mapping[str, Tenant], by_id: Mapping[str, Tenant], required: bool) -> None:
        self.by_digest = by_digest
        self.by_id = by_id
        # whether requests need a key: static keys are configured or any managed key exists (a revoked one too,
        # so revoking the last key never opens the gateway)
        self.required = required

    def find(self, hmac_digest: str, sha_digest: str) -> Tenant | None:
        return self.by_digest.get(hmac_digest) or self.by_digest.get(sha_digest)


def build_tenants(
    keys: Iterable[KeyConfig], teams: Iterable[TeamConfig], static_digests: Iterable[str] = ()
) -> TenantTable:
    """The lookup table of managed keys (with their teams) and static `[server] api_keys` digests (hex)."""
    team_by_name = {t.name: t for t in teams}
    by_digest: dict[str, Tenant] = {}
    by_id: dict[str, Tenant] = {}
    managed = False
    for key in keys:
        managed = True
        team = team_by_name.get(key.team) if key.team else None
        tenant = _tenant(key, team, previous=False)
        by_digest[key.digest] = by_id[key.id] = tenant
        if key.previous_digest is not None:
            by_digest[key.previous_digest] = _tenant(key, team, previous=True)
    statics = False
    for hexdigest in static_digests:
        statics = True
        digest = f"sha256:{hexdigest}"
        if digest not in by_digest:
            by_digest[digest] = by_id.setdefault(hexdigest[:12], Tenant(key_id=hexdigest[:12]))
    return TenantTable(by_digest, by_id, managed or statics)
