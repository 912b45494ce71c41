"""`POST /admin/v1/route/explain`: the full decision trace for a request, as a dry run.

The decision is made by the same pipeline code, over a snapshot loaded from Redis just now, with the
cluster-wide in-flight counts that snapshot carries. Nothing is sent to a backend and nothing is
written: no telemetry, no load, no queue. With `api_key_id` of a managed key (`key_...`), the key's and its
team's constraints (allowed models, forced privacy, max tier, priority, budgets) apply as on a router node.
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
from nexus.core.state import read_desired
from nexus.core.tenancy import build_tenants

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
    _, desired = await read_desired(redis)
    tenant = None
    if body.api_key_id is not None and body.api_key_id.startswith("key_"):
        tenant = build_tenants(desired.keys, desired.teams).by_id.get(body.api_key_id)
        if tenant is None:
            raise HTTPException(404, f"api_key_id: no key {body.api_key_id!r}")
    snap = await load_snapshot(redis, settings, time.time())
    intent = RoutingIntent(
        chat.model,
        extract_requirements(body.request),
        tier_mode=routing.tier_mode,
        priority=routing.priority,
        api_key_id=body.api_key_id,
        tenant=tenant,
    )
    out = explain(decide(intent, snap, trace=True))
    out["snapshot_version"] = snap.version
    return out
