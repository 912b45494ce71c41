"""The worker loops' tick bodies, and the arq job functions that run them once per scheduled tick.

`run_health`, `run_budget`, `run_quality` and `run_nodes` are one tick each: read what is observed,
call the pure reconcilers (`nexus.worker.health`, `nexus.worker.reconcilers`), write the result. They are level-based
(each tick recomputes from what Redis and the backends say now, whatever earlier ticks did) and every
write is idempotent, so they are safe to run concurrently or twice.

The `*_job(ctx)` functions are what arq schedules. Each first claims its tick (`nexus.worker.store.claim_tick`,
keyed by the tick time in the unique cron job id, which every worker computes identically): a duplicate
delivery is counted and does nothing. Budget limits, backends and key budgets come from the desired
config in Redis (the admin API changes them live), and so do the budgets' reset days; the health
thresholds come from this process's settings, exactly as on router nodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregate_store import read_aggregate, read_quality_minutes, repair_live_spend
from nexus.core.aggregates import inconsistencies
from nexus.core.config import GLOBAL_SCOPE, DesiredConfig, NexusSettings
from nexus.core.model import HealthState
from nexus.core.recovery import read_restored
from nexus.core.reservations import read_unreconciled, settle_node
from nexus.core.spend_report import write_budget_observations
from nexus.core.state import read_desired
from nexus.worker.health import HealthPolicy, next_health, warming_up
from nexus.worker.metrics import (
    AGGREGATE_INCONSISTENCIES,
    BACKEND_LATENCY,
    ROLLUP_LAST_SUCCESS,
    TICK_FAILURES,
    TICK_SECONDS,
    UNRECONCILED_USD,
)
from nexus.worker.probe import probe_all, target_for
from nexus.worker.reconcilers import observe_budgets, plan_liveness, quality_stats
from nexus.worker.schedule import tick_of
from nexus.worker.store import (
    claim_tick,
    compare_and_set,
    health_change,
    mark_nodes_gone,
    read_health_raw,
    read_heartbeats_raw,
    replace_quality,
)

__all__ = [
    "BUDGET_JOB",
    "CTX_KEY",
    "HEALTH_JOB",
    "NODES_JOB",
    "QUALITY_JOB",
    "WorkerContext",
    "budget_job",
    "health_job",
    "nodes_job",
    "quality_job",
    "run_budget",
    "run_health",
    "run_nodes",
    "run_quality",
    "ticked",
]

log = logging.getLogger("nexus.worker")

HEALTH_JOB = "nexus.health"
BUDGET_JOB = "nexus.budget"
QUALITY_JOB = "nexus.quality"
NODES_JOB = "nexus.nodes"
CTX_KEY = "nexus"


@dataclass(slots=True)
class WorkerContext:
    """What the jobs share in one worker process (arq's ctx[CTX_KEY]); the session is opened on start-up."""

    settings: NexusSettings
    clock: Callable[[], float] = time.time
    http: aiohttp.ClientSession | None = None


async def _desired(redis: Redis, settings: NexusSettings) -> DesiredConfig:
    version, desired = await read_desired(redis, salvage=True)
    return desired if version else settings.desired()


async def run_health(
    redis: Redis, session: aiohttp.ClientSession, settings: NexusSettings, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """Probe every backend concurrently, step each one's state machine, store by compare-and-set."""
    started = time.perf_counter()
    backends = (await _desired(redis, settings)).backends
    previous = await read_health_raw(redis)
    targets = [target_for(b, settings.secrets) for b in backends]
    results = await probe_all(session, targets, settings.health_check.timeout_seconds)
    now = clock()
    policy = HealthPolicy.from_config(settings.health_check)
    changes, states = [], {}
    for b in backends:
        raw, prev = previous.get(b.name, (None, None))
        probe = results[b.name]
        if probe.latency_ms is not None:
            BACKEND_LATENCY.labels(b.name).observe(probe.latency_ms / 1000.0)
        record = next_health(prev, probe, policy, now, warming_up=warming_up(prev, b.warmup_seconds, now))
        states[b.name] = record.state
        if prev is None or prev.state is not record.state:
            level = logging.WARNING if record.state is HealthState.UNHEALTHY else logging.INFO
            log.log(level, "backend %s is %s%s", b.name, record.state, f" ({probe.error})" if probe.error else "")
        changes.append(health_change(b.name, raw, record))
    configured = {b.name for b in backends}
    changes += [health_change(name, raw, None) for name, (raw, _) in previous.items() if name not in configured]
    written = await compare_and_set(redis, keys.OBSERVED_HEALTH, changes)
    counts = {s.value: sum(1 for v in states.values() if v is s) for s in HealthState}
    return {"backends": len(backends), **counts, "written": len(written), "seconds": time.perf_counter() - started}


async def run_budget(redis: Redis, settings: NexusSettings, now: float) -> dict[str, Any]:
    """Observe every budget in its own current period from the aggregates router nodes' batches write."""
    routing = await _desired(redis, settings)  # budgets of [routing], keys and teams
    # reset days are desired state like the limits: one source for workers, router nodes and admin
    calendar = routing.calendar(settings.testing)
    periods = calendar.periods(list(routing.budgets()), now)
    aggregates = {p: await read_aggregate(redis, p) for p in sorted(set(periods.values()))}
    inconsistent = {p: problems for p, agg in aggregates.items() if (problems := inconsistencies(agg))}
    for period, problems in inconsistent.items():
        AGGREGATE_INCONSISTENCIES.labels(period).inc()
        log.error("spend aggregate of %s is inconsistent: %s", period, "; ".join(problems))
    # spend no record carries: dead nodes' unrecorded admissions, and what nodes put back after a data loss
    extra: dict[str, dict[str, float]] = {}
    for p in aggregates:
        lost = (await read_restored(redis, p))[1]
        unrec = await read_unreconciled(redis, p)
        extra[p] = {s: unrec.get(s, 0.0) + lost.get(s, 0.0) for s in {*unrec, *lost}}
    observations = observe_budgets(routing, aggregates, periods, now, extra)
    await write_budget_observations(redis, observations)
    repaired: list[str] = []
    for period in aggregates:
        floors = {s: obs.spend_usd for s, obs in observations.items() if obs.spend_usd > 0 and periods[s] == period}
        raised = await repair_live_spend(redis, period, floors)
        if raised:
            log.warning("live spend of %s was below the aggregate for %s; raised it", period, ", ".join(raised))
        repaired += raised
    ROLLUP_LAST_SUCCESS.set(time.time())
    return {
        "period": periods[GLOBAL_SCOPE],
        "periods": periods,
        "budgets": {scope: obs.status.value for scope, obs in observations.items()},
        "repaired": repaired,
        "inconsistent": inconsistent,
    }


async def run_quality(redis: Redis, settings: NexusSettings, now: float) -> dict[str, Any]:
    """Recompute every backend's quality from its minutes of the last 24 h."""
    desired = await _desired(redis, settings)
    names = [b.name for b in desired.backends]
    minutes = await read_quality_minutes(redis, names, now)
    stats = {name: s for name in names if (s := quality_stats(minutes.get(name, {}), now)) is not None}
    await replace_quality(redis, stats)
    return {"backends_with_history": len(stats)}


async def run_nodes(redis: Redis, now: float, settings: NexusSettings | None = None) -> dict[str, Any]:
    """Mark router nodes without a recent heartbeat gone; forget long-gone ones."""
    raw = await read_heartbeats_raw(redis)
    beats = {node: beat for node, (_, beat) in raw.items() if beat is not None}
    plan = plan_liveness(beats, now)
    marked, removed = await mark_nodes_gone(
        redis, [(b, raw[b.node][0]) for b in plan.mark_gone], [(b, raw[b.node][0]) for b in plan.forget]
    )
    for node in marked:
        log.warning("router node %s stopped sending heartbeats; marked gone", node)
    charged: dict[str, float] = {}
    if marked:
        # a dead node's admitted requests will never be recorded: charge them as unreconciled, drop its leases
        _, desired = await read_desired(redis, salvage=True)
        calendar = desired.calendar(settings.testing if settings is not None else None)
        rules = [calendar.rule(scope) for scope in desired.budgets()]
        # the current and the previous period of every scope: a lease taken just before a rollover
        periods = sorted({name for r in rules for name in (r.name(now), r.previous(now))})
        for node in marked:
            settled = await settle_node(redis, periods, node)
            if settled:
                log.warning("router node %s died with %s admitted but unrecorded; charged as unreconciled", node,
                            ", ".join(f"{s} {p} ${usd:.6f}" for (s, p), usd in sorted(settled.items())))
            for (scope, period), usd in settled.items():
                charged[f"{scope}|{period}"] = charged.get(f"{scope}|{period}", 0.0) + usd
                if scope == GLOBAL_SCOPE:
                    UNRECONCILED_USD.inc(usd)
    return {"nodes": len(beats), "marked_gone": marked, "removed": removed, "unreconciled_charged": charged}


# -- arq job functions ------------------------------------------------------------------------------------
async def _claim(ctx: dict[str, Any], job: str) -> tuple[WorkerContext, int] | None:
    wc: WorkerContext = ctx[CTX_KEY]
    tick = tick_of(str(ctx.get("job_id", "")), int(ctx.get("score") or wc.clock() * 1000))
    runs = await claim_tick(ctx["redis"], job, tick)
    if runs > 1:
        log.warning("%s tick %d delivered again (run %d); not repeating its work", job, tick, runs)
        return None
    return wc, tick


async def _ticked(
    ctx: dict[str, Any], job: str, body: Callable[[WorkerContext], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run `body` once per scheduled tick; a late duplicate delivery is counted and does nothing."""
    claimed = await _claim(ctx, job)
    if claimed is None:
        return {"duplicate": True}
    wc, tick = claimed
    started = time.perf_counter()
    try:
        result = await body(wc)
    except Exception:
        TICK_FAILURES.labels(job).inc()
        raise
    finally:
        TICK_SECONDS.labels(job).observe(time.perf_counter() - started)
    return {"tick": tick, **result}


ticked = _ticked  # for job modules of their own (nexus.worker.discovery, nexus.worker.lifecycle)


async def health_job(ctx: dict[str, Any]) -> dict[str, Any]:
    async def body(wc: WorkerContext) -> dict[str, Any]:
        assert wc.http is not None, "the worker's start-up opens the HTTP session"
        return await run_health(ctx["redis"], wc.http, wc.settings, wc.clock)

    return await _ticked(ctx, HEALTH_JOB, body)


async def budget_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _ticked(
        ctx, BUDGET_JOB, lambda wc: run_budget(ctx["redis"], wc.settings, wc.clock())
    )


async def quality_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _ticked(
        ctx, QUALITY_JOB, lambda wc: run_quality(ctx["redis"], wc.settings, wc.clock())
    )


async def nodes_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return await _ticked(ctx, NODES_JOB, lambda wc: run_nodes(ctx["redis"], wc.clock(), wc.settings))
