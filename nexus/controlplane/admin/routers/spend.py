"""`GET /admin/v1/spend`: the spend report of the current period (or `?period=YYYY-MM`): totals, breakdowns
by backend, model and API key, the live counters and the budget observations of that period.

Past periods' reports are kept (their aggregates outlive the period), so `?period=` reads history. The
period names the global budget's period; `by_key` counts each key in its own budget's period of that name
(the same unless the key budget has its own reset day).
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.core.config import GLOBAL_SCOPE
from nexus.core.spend_report import read_spend_report
from nexus.core.state import read_desired

__all__ = ["router"]

router = APIRouter(prefix="/spend", tags=["spend"], dependencies=[Authorized])
# calendar months (YYYY-MM); [testing] fixed-length periods are named by their start (YYYYMMDDTHHMMSSZ)
_PERIOD = re.compile(r"^(\d{4}-(0[1-9]|1[0-2])|\d{8}T\d{6}Z)$")


@router.get("")
async def get_spend(
    redis: RedisDep,
    settings: SettingsDep,
    period: str | None = Query(default=None, description="YYYY-MM (default: the current period)"),
) -> dict[str, Any]:
    if period is not None and not _PERIOD.match(period):
        raise HTTPException(422, "period must look like 2026-11 (YYYY-MM)")
    _, desired = await read_desired(redis)
    current = desired.calendar(settings.testing).period(GLOBAL_SCOPE, time.time())
    report = await read_spend_report(redis, period or current)
    report["current_period"] = current
    return report
