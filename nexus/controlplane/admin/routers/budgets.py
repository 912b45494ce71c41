"""`/admin/v1/budgets`: every budget with its current-period spend and status; change one by scope.

Scope `global` is `[routing.budget]`; any other scope is an API key id (`routing.key_budgets`). Each budget
is shown in its own current period (a key budget may have its own `reset_day`; without one it follows the
global budget's, and says so in `reset_day_inherited`). Spend is the larger of the live counter router nodes
keep and the budget worker's aggregate for the period.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.controlplane.admin.schemas import BudgetPublic, BudgetUpdate, WriteResult
from nexus.core.config import GLOBAL_SCOPE, BudgetConfig, DesiredConfig
from nexus.core.model import BudgetState
from nexus.core.state import read_desired, read_observed, update_desired
from nexus.core.telemetry_store import read_live_spend

__all__ = ["router"]

router = APIRouter(prefix="/budgets", tags=["budgets"], dependencies=[Authorized])
Scope = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")]


@router.get("", response_model=list[BudgetPublic])
async def list_budgets(redis: RedisDep, settings: SettingsDep) -> list[BudgetPublic]:
    _, desired = await read_desired(redis)
    calendar = desired.calendar(settings.testing)
    now = time.time()
    observed = (await read_observed(redis)).spend
    live: dict[str, dict[str, float]] = {}
    out = []
    for scope, cfg in desired.budgets().items():
        rule = calendar.rule(scope)
        period = rule.name(now)
        if period not in live:
            live[period] = await read_live_spend(redis, period)
        obs = observed.get(scope)
        spend = max(live[period].get(scope, 0.0), obs.spend_usd if obs and obs.period == period else 0.0)
        state = BudgetState(scope, cfg.monthly_limit_usd, cfg.soft_limit_percent, cfg.hard_limit_action, spend, period)
        out.append(
            BudgetPublic(
                **{**cfg.model_dump(), "reset_day": rule.reset_day},
                reset_day_inherited=scope != GLOBAL_SCOPE and cfg.reset_day is None,
                period_ends_at=rule.end(now),
                scope=scope,
                period=period,
                spend_usd=spend,
                status=state.status().value,
                utilization=state.utilization(),
                remaining_usd=state.remaining(),
            )
        )
    return out


@router.put("/{scope}", response_model=WriteResult, responses={422: {"description": "invalid budget"}})
async def put_budget(scope: Scope, body: BudgetUpdate, redis: RedisDep) -> WriteResult:
    changes = body.model_dump(exclude_unset=True, exclude_none=True, exclude={"unlimited"})
    if body.unlimited:
        changes["monthly_limit_usd"] = None

    def change(current: DesiredConfig) -> DesiredConfig:
        routing = current.routing
        base = routing.budget if scope == GLOBAL_SCOPE else routing.key_budgets.get(scope, BudgetConfig())
        # validate as TOML would (soft_limit_percent 75 -> 0.75, ranges) before it reaches the config
        updated = BudgetConfig.model_validate({**base.model_dump(), **changes})
        if scope == GLOBAL_SCOPE:
            routing = routing.model_copy(update={"budget": updated})
        else:
            routing = routing.model_copy(update={"key_budgets": {**routing.key_budgets, scope: updated}})
        return current.model_copy(update={"routing": routing})

    return WriteResult(version=await update_desired(redis, change, f"budget.put:{scope}"))


@router.delete("/{scope}", response_model=WriteResult, responses={404: {"description": "no such key budget"}})
async def delete_budget(scope: Scope, redis: RedisDep) -> WriteResult:
    if scope == GLOBAL_SCOPE:
        raise HTTPException(422, 'the global budget cannot be deleted; PUT {"unlimited": true} to remove its limit')
    _, desired = await read_desired(redis)
    if scope not in desired.routing.key_budgets:
        raise HTTPException(404, f"no budget for scope {scope!r}")

    def change(current: DesiredConfig) -> DesiredConfig | None:
        kb = {k: v for k, v in current.routing.key_budgets.items() if k != scope}
        return current.model_copy(update={"routing": current.routing.model_copy(update={"key_budgets": kb})})

    return WriteResult(version=await update_desired(redis, change, f"budget.delete:{scope}"))
