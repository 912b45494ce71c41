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
from nexus.core.pipeline import RoutingIntent, decide, explain, extract_requirements
from nexus.core.schemas import parse_chat, parse_routing_headers

__all__ = ["router"]

router = APIRouter(prefix="/route", tags=["explain"], dependencies=[Authorized])


@router.post("/explain", responses={422: {"description": "invalid chat request"}})
async def explain_route(body: ExplainRequest, redis: RedisDep, settings: SettingsDep) -> dict[str, Any]:
    try:
        chat = parse_chat(body.request)
    except BadRequest as exc:
        raise HTTPException(422, f"request.{exc.message}") from None
    headers = {k.lower(): v for k, v in body.headers.items()}
    try:
        routing = parse_routing_headers(headers.get)
    except BadRequest as exc:
        raise HTTPException(422, f"headers.{exc.message}") from None
    snap = await load_snapshot(redis, settings, time.time())
    intent = RoutingIntent(
        chat.model,
        extract_requirements(body.request),
        tier_mode=routing.tier_mode,
        priority=routing.priority,
        api_key_id=body.api_key_id,
    )
    out = explain(decide(intent, snap, trace=True))
    out["snapshot_version"] = snap.version
    return out
