"""`POST /admin/v1/route/explain`: the full decision trace for a request, as a dry run.

The decision is made by the same pipeline code, over a snapshot loaded from Redis just now, with the
cluster-wide in-flight counts that snapshot carries. Nothing is sent to a backend and nothing is
written: no telemetry, no load, no queue.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.controlplane.admin.schemas import ExplainRequest
from nexus.core.fetch import load_snapshot
from nexus.core.gateway_errors import BadRequest
from nexus.core.model import TierMode
from nexus.core.pipeline import RoutingIntent, decide, explain, extract_requirements
from nexus.core.schemas import parse_chat

__all__ = ["router"]

router = APIRouter(prefix="/route", tags=["explain"], dependencies=[Authorized])
_TRUE = {"true", "1", "yes", "on"}


@router.post("/explain", responses={422: {"description": "invalid chat request"}})
async def explain_route(body: ExplainRequest, redis: RedisDep, settings: SettingsDep) -> dict[str, Any]:
    try:
        chat = parse_chat(body.request)
    except BadRequest as exc:
        raise HTTPException(422, f"request.{exc.message}") from None
    headers = {k.lower(): v.strip().lower() for k, v in body.headers.items()}
    tier_mode = None
    if headers.get("x-nexus-strict") in _TRUE:
        tier_mode = TierMode.STRICT
    elif headers.get("x-nexus-flexible") in _TRUE:
        tier_mode = TierMode.FLEXIBLE
    priority = headers.get("x-nexus-priority", "normal")
    if priority not in ("high", "normal"):
        raise HTTPException(422, "headers.X-Nexus-Priority must be 'high' or 'normal'")
    snap = await load_snapshot(redis, settings, time.time())
    intent = RoutingIntent(
        chat.model,
        extract_requirements(body.request),
        tier_mode=tier_mode,
        priority=priority,
        api_key_id=body.api_key_id,
    )
    out = explain(decide(intent, snap, trace=True))
    out["snapshot_version"] = snap.version
    return out
