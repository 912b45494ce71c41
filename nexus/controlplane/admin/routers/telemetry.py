"""`GET /admin/v1/telemetry/quarantine`: telemetry records the budget worker could not count (malformed, or
counters out of bounds), with the reason and the record as it was written. They are kept, not counted."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from nexus.controlplane.admin.deps import Authorized, RedisDep
from nexus.core.aggregate_store import read_quarantine

__all__ = ["router"]

router = APIRouter(prefix="/telemetry", tags=["telemetry"], dependencies=[Authorized])


@router.get("/quarantine")
async def quarantine(redis: RedisDep, limit: int = Query(default=100, ge=1, le=1000)) -> dict[str, Any]:
    count, records = await read_quarantine(redis, limit)
    return {"count": count, "records": records}
