"""`/admin/v1/health` (backends with health and quality) and `/admin/v1/nodes` (router replicas)."""

from __future__ import annotations

import time
from dataclasses import asdict

from fastapi import APIRouter

from nexus.controlplane.admin.deps import Authorized, RedisDep, SettingsDep
from nexus.controlplane.admin.schemas import HealthPublic, NodePublic
from nexus.core import keys
from nexus.core.fetch import load_snapshot
from nexus.core.state import read_health
from nexus.core.telemetry_store import read_heartbeats

__all__ = ["health_router", "nodes_router"]

health_router = APIRouter(prefix="/health", tags=["health"], dependencies=[Authorized])
nodes_router = APIRouter(prefix="/nodes", tags=["nodes"], dependencies=[Authorized])


@health_router.get("", response_model=list[HealthPublic])
async def backend_health(redis: RedisDep, settings: SettingsDep) -> list[HealthPublic]:
    snap = await load_snapshot(redis, settings, time.time())
    records = await read_health(redis)
    out = []
    for name, b in snap.backends.items():
        record = records.get(name)
        out.append(
            HealthPublic(
                name=name,
                type=b.type.value,
                zone=b.zone.value,
                health=b.health.value,
                checked_at=record.checked_at if record else None,
                latency_ema_ms=b.latency_ema_ms,
                models=sorted(b.models),
                quality=asdict(b.quality) if b.quality else None,
                unusable=b.unusable,
            )
        )
    return out


@nodes_router.get("", response_model=list[NodePublic])
async def nodes(redis: RedisDep) -> list[NodePublic]:
    now = time.time()
    out = []
    for beat in await read_heartbeats(redis):
        age = now - beat.at
        status = (
            "gone"
            if getattr(beat, "gone", False) or age > keys.NODE_STALE_SECONDS
            else ("draining" if beat.draining else "up")
        )
        out.append(
            NodePublic(
                node=beat.node,
                status=status,
                last_seen_seconds=round(age, 3),
                snapshot_version=beat.snapshot_version,
                snapshot_age_seconds=round(now - beat.snapshot_built_at, 3) if beat.snapshot_built_at else None,
                observed_age_seconds=round(now - beat.observed_at, 3) if beat.observed_at else None,
                inflight=beat.inflight,
                queue_depth=beat.queue_depth,
                telemetry_buffered=beat.telemetry_buffered,
                redis_ok=beat.redis_ok,
                draining=beat.draining,
                snapshot_error=beat.snapshot_error,
                failing_version=beat.failing_version,
                state_lost=beat.state_lost,
            )
        )
    return out
