"""The public views of keys and teams: their config without digests, plus current spend and rate usage."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from nexus.controlplane.admin.tenancy_schemas import KeyPublic, TeamPublic, Usage
from nexus.core.config import DesiredConfig, NexusSettings
from nexus.core.model import BudgetState
from nexus.core.rates import read_usage, window_ms
from nexus.core.telemetry_store import read_live_spend
from nexus.core.tenancy import KeyConfig, TeamConfig, TenantLimits, team_scope

__all__ = ["key_public", "team_public", "usage"]

_PRIVATE = {"digest", "previous_digest", "previous_until"}


async def usage(
    redis: Redis, settings: NexusSettings, desired: DesiredConfig, scope: str, limits: TenantLimits
) -> Usage:
    """Spend of `scope` in its current period (the live counter router nodes keep) and its last-window rates."""
    now = time.time()
    period = desired.calendar(settings.testing).rule(scope).name(now)
    spend = (await read_live_spend(redis, period)).get(scope, 0.0)
    budget = desired.budgets().get(scope)
    status = None
    if budget is not None:
        state = BudgetState(scope, budget.monthly_limit_usd, budget.soft_limit_percent, budget.hard_limit_action, spend)
        status = state.status().value
    window = window_ms(settings.testing.rate_window_seconds)
    return Usage(
        spend_usd=spend,
        period=period,
        budget_status=status,
        rpm_used=await read_usage(redis, "rpm", scope, window) if limits.rpm is not None else None,
        tpm_used=await read_usage(redis, "tpm", scope, window) if limits.tpm is not None else None,
    )


async def key_public(redis: Redis, settings: NexusSettings, desired: DesiredConfig, key: KeyConfig) -> KeyPublic:
    now = time.time()
    status = "revoked" if key.revoked_at is not None else (
        "expired" if key.expires_at is not None and now >= key.expires_at else "active"
    )
    return KeyPublic(
        **key.model_dump(exclude=_PRIVATE),
        status=status,
        previous_valid_until=key.previous_until,
        usage=await usage(redis, settings, desired, key.id, key),
    )


async def team_public(redis: Redis, settings: NexusSettings, desired: DesiredConfig, team: TeamConfig) -> TeamPublic:
    return TeamPublic(
        **team.model_dump(),
        keys=sum(1 for k in desired.keys if k.team == team.name),
        usage=await usage(redis, settings, desired, team_scope(team.name), team),
    )
