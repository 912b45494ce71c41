"""The fleet job: pre-warming from demand (`[fleet]`, docs/fleet.md).

Every `fleet.interval_seconds` it samples the per-model request counters of the current budget period's
aggregate (`model.requests:<model>`, summed from telemetry batches), keeps the samples of the last
`window_seconds` ({fleet} recommendations), and turns rates into load recommendations for Ollama backends
(`nexus.core.fleet.lifecycle.recommend`, pure). With `auto_prewarm` it submits those loads as lifecycle
operations itself, unless one for the same backend and model is still pending or running.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import GLOBAL_SCOPE, NexusSettings
from nexus.core.fleet.lifecycle import Operation, OpKind, rate_per_minute, recommend
from nexus.core.fleet.store import read_ops, read_ps, read_recommendations, write_op, write_recommendations
from nexus.core.model import BackendType
from nexus.core.observed import as_text, decode_hash, guard
from nexus.core.state import read_desired, read_health
from nexus.worker.jobs import ticked

__all__ = ["FLEET_JOB", "fleet_job", "run_fleet"]

FLEET_JOB = "nexus.fleet"
_PREFIX = "model.requests:"
_MAX_MODELS = 1000


async def _counts(redis: Redis, settings: NexusSettings, routing: Any, now: float) -> dict[str, int]:
    period = routing.calendar(settings.testing).periods([GLOBAL_SCOPE], now)[GLOBAL_SCOPE]
    with guard("reading request counts"):
        reply = await redis.hgetall(keys.telemetry_agg(period))
    out = {}
    for field, raw in decode_hash(reply).items():
        if field.startswith(_PREFIX) and len(out) < _MAX_MODELS:
            try:
                out[field.removeprefix(_PREFIX)] = int(as_text(raw))
            except ValueError:
                continue
    return out


async def run_fleet(redis: Redis, settings: NexusSettings, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    cfg = settings.fleet
    now = clock()
    _, desired = await read_desired(redis, salvage=True)
    counts = await _counts(redis, settings, desired.routing, now)
    state = await read_recommendations(redis)
    old = state.get("samples") if isinstance(state.get("samples"), dict) else {}
    samples: dict[str, list[list[float]]] = {}
    for model, count in counts.items():
        window = cfg.window_seconds
        kept = [s for s in old.get(model, []) if isinstance(s, list) and len(s) == 2 and now - s[0] <= window]
        samples[model] = [*kept, [now, count]]
    rates = {m: rate_per_minute([(t, int(c)) for t, c in s], now, cfg.window_seconds) for m, s in samples.items()}
    health = await read_health(redis)
    ollama = [b for b in desired.backends if b.type is BackendType.OLLAMA]
    installed = {
        b.name: [m.name for m in b.models] + [m.name for m in (health[b.name].models if b.name in health else ())]
        for b in ollama
    }
    readings = await read_ps(redis)
    loaded = {b: [m.get("name") for m in r.get("models", [])] for b, r in readings.items()}
    recs = recommend(rates, installed, loaded, cfg.prewarm_min_requests_per_minute, cfg.max_recommendations)
    if cfg.auto_prewarm and recs:
        busy = {(o.backend, o.model) for o in (await read_ops(redis)).values() if not o.finished}
        for i, r in enumerate(recs):
            if (r.backend, r.model) not in busy:
                op = Operation(id=uuid.uuid4().hex, kind=OpKind.LOAD, model=r.model, backend=r.backend,
                               created_at=now, updated_at=now)
                await write_op(redis, op)
            recs[i] = r.model_copy(update={"performed": True})
    await write_recommendations(redis, {"computed_at": now, "samples": samples,
                                        "recommendations": [r.model_dump() for r in recs]})
    return {"models": len(counts), "recommendations": len(recs), "performed": cfg.auto_prewarm}


async def fleet_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return await ticked(ctx, FLEET_JOB, lambda wc: run_fleet(ctx["redis"], wc.settings, wc.clock))
