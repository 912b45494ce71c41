"""`GET /admin/v1/spend`: spend of the current period (or `?period=YYYY-MM`), by scope."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from controlplane.admin.deps import Authorized, RedisDep
from controlplane.periods import period_of
from controlplane.state import read_desired
from controlplane.telemetry_store import read_live_spend

__all__ = ["router"]

router = APIRouter(prefix="/spend", tags=["spend"], dependencies=[Authorized])
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@router.get("")
async def get_spend(redis: RedisDep, period: str | None = Query(default=None, description="YYYY-MM")) -> dict[str, Any]:
    _, desired = await read_desired(redis)
    current = period_of(time.time(), desired.routing.budget.reset_day)
    if period is not None and not _PERIOD.match(period):
        raise HTTPException(422, "period must look like 2026-11 (YYYY-MM)")
    chosen = period or current
    live = await read_live_spend(redis, chosen)
    return {"period": chosen, "current_period": current, "by_scope": live}
