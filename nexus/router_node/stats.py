"""`GET /v1/stats` (Rust Nexus's shape, for the whole cluster) and the details of `GET /health`.

`/health` stays a liveness probe: always 200 while the process serves, computed from the snapshot in
memory (no I/O), with `status` healthy (every backend passes its checks), degraded (some do not, or some
are not checked yet) or unhealthy (none passes, or no snapshot yet), and the backend counts.

`/v1/stats` reads Redis: the current period's aggregate (requests, errors, per backend and per
model), the router nodes' heartbeats (cluster uptime: since the oldest live node started), and the node's
snapshot (cluster-wide in-flight counts, each backend's quality over the last hour and day, budgets). One
reading is cached for `STATS_TTL_SECONDS`, so a dashboard polling every replica costs Redis little.
Requests a node has not flushed yet (at most one `telemetry.flush_interval_ms`) are not counted.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregate_store import read_aggregate
from nexus.core.config import GLOBAL_SCOPE
from nexus.core.model import HealthState
from nexus.core.snapshot import Snapshot
from nexus.core.telemetry_store import read_heartbeats

__all__ = ["STATS_TTL_SECONDS", "StatsCache", "health_details"]

STATS_TTL_SECONDS = 1.0


def health_details(snap: Snapshot | None, started_at: float, now: float) -> dict[str, Any]:
    if snap is None:
        return {"status": "unhealthy", "reason": "no routing snapshot yet", "uptime_seconds": int(now - started_at),
                "backends": {"total": 0, "healthy": 0, "unhealthy": 0, "unknown": 0}}
    counts = {s: 0 for s in HealthState}
    for b in snap.backends.values():
        counts[b.health] += 1
    total, healthy = len(snap.backends), counts[HealthState.HEALTHY]
    usable = healthy + counts[HealthState.LOADING] + counts[HealthState.UNKNOWN]
    status = "healthy" if total and healthy == total else ("degraded" if usable else "unhealthy")
    return {
        "status": status,
        "uptime_seconds": int(now - started_at),
        "snapshot_version": snap.version,
        "backends": {"total": total, **{s.value: n for s, n in counts.items()}},
    }


class StatsCache:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._at = float("-inf")
        self._body: dict[str, Any] | None = None

    async def get(self, snap: Snapshot | None, started_at: float, now: float) -> dict[str, Any]:
        if self._body is None or time.monotonic() - self._at > STATS_TTL_SECONDS:
            self._body = await self._read(snap, started_at, now)
            self._at = time.monotonic()
        return self._body

    async def _read(self, snap: Snapshot | None, started_at: float, now: float) -> dict[str, Any]:
        budgets = snap.budgets if snap is not None else {}
        glob = budgets.get(GLOBAL_SCOPE)
        period = glob.period if glob is not None else None
        agg = await read_aggregate(self._redis, period) if period else None
        beats = [b for b in await read_heartbeats(self._redis)
                 if not b.gone and now - b.at <= keys.NODE_STALE_SECONDS]
        oldest = min([b.started_at for b in beats] + [started_at])
        total = agg.total if agg is not None else None
        by_backend = agg.by_backend if agg is not None else {}
        backends = []
        for name, b in (snap.backends.items() if snap is not None else ()):
            t = by_backend.get(name)
            q = b.quality
            backends.append({
                "id": name,
                "name": name,
                "health": b.health.value,
                "requests": t.requests if t else 0,
                "average_latency_ms": b.latency_ema_ms,  # health probes' moving average
                "pending": snap.inflight.get(name, 0) if snap is not None else 0,
                "max_concurrency": b.max_concurrency,
                "error_rate_1h": q.error_rate_1h if q else None,
                "avg_ttft_ms": q.avg_ttfb_ms_1h if q else None,
                "success_rate_24h": q.success_rate_24h if q else None,
            })
        by_model = agg.by_model if agg is not None else {}
        names = sorted(set(snap.by_model) | set(by_model)) if snap is not None else sorted(by_model)
        models = [{"name": m, "requests": by_model[m].requests if m in by_model else 0,
                   "backends": [b.name for b in snap.by_model.get(m, ())] if snap is not None else []}
                  for m in names]
        requests = total.requests if total else 0
        errors = total.errors if total else 0
        return {
            "uptime_seconds": int(now - oldest),
            "period": period,
            "nodes": len(beats),
            "requests": {"total": requests, "success": requests - errors, "errors": errors},
            "backends": backends,
            "models": models,
            "budget": {
                scope: {"period": s.period, "spend_usd": s.spend_usd, "limit_usd": s.monthly_limit_usd,
                        "status": s.status().value, "utilization": s.utilization()}
                for scope, s in budgets.items()
            },
        }
