"""arq `WorkerSettings` built from `NexusSettings`: the four reconciliation loops as unique cron jobs.

    health   every health_check.interval_seconds (default 10 s), also once at start-up
    budget   every routing.budget.reconciliation_interval_secs (default 60 s)
    quality  every quality.metrics_interval_seconds (default 30 s)
    nodes    every 3 s (a third of keys.NODE_STALE_SECONDS, rounded down to divide a minute)
    lifecycle  every second: pending model operations (load, unload, migrate), /api/ps readings
    fleet    every fleet.interval_seconds (default 30 s): pre-warm recommendations (and loads, auto_prewarm)
    discovery  every discovery.browse_interval_seconds (default 10 s) when [discovery] enabled, also at start-up

Intervals are rounded down to an even wall-clock grid (`nexus.worker.schedule`), evaluated in UTC, so every
worker process (and `nexus serve`'s in-process worker) computes the same tick times and job ids.

Exactly-once per tick, in three layers:
1. arq cron uniqueness: job id `<name>:<tick ms>`; a worker's enqueue of an id that is queued or
   running is refused, and only one worker can take the in-progress lock;
2. `keep_result` on every cron job (at least 5 min, 3 intervals for slow loops): a finished tick's
   result key makes a late enqueue of the same id (a worker with a lagging clock, a restart) a no-op;
3. the job body claims its tick (`nexus.worker.store.claim_tick`) and does nothing when it is not the first.
Each loop's writes are idempotent anyway (level-based: a tick recomputes and replaces what it writes).

`WorkerSettings` as a module attribute (for `arq nexus.worker.settings.WorkerSettings`) is built lazily from
`NEXUS_*` environment settings; `nexus worker` builds it from `--config` via `worker_settings`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.cron import CronJob

from nexus.core import keys
from nexus.core.config import NexusSettings, load_settings
from nexus.core.redis_conn import RedisTarget
from nexus.core.state import seed_desired
from nexus.worker.discovery import DISCOVERY_JOB, discovery_job
from nexus.worker.fleet import FLEET_JOB, fleet_job
from nexus.worker.jobs import (
    BUDGET_JOB,
    CTX_KEY,
    HEALTH_JOB,
    NODES_JOB,
    QUALITY_JOB,
    WorkerContext,
    budget_job,
    health_job,
    nodes_job,
    quality_job,
)
from nexus.worker.lifecycle import LIFECYCLE_INTERVAL_SECONDS, LIFECYCLE_JOB, lifecycle_job
from nexus.worker.probe import new_session
from nexus.worker.schedule import cron_fields, effective_interval

__all__ = ["ALL_JOBS", "NODES_INTERVAL_SECONDS", "JobSpec", "cron_jobs", "job_specs", "worker_settings"]

NODES_INTERVAL_SECONDS = keys.NODE_STALE_SECONDS / 3
ALL_JOBS = (HEALTH_JOB, BUDGET_JOB, QUALITY_JOB, NODES_JOB)
MIN_KEEP_RESULT_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    coroutine: Callable[[dict[str, Any]], Any]
    interval: float  # as configured; the schedule runs at effective_interval(interval)
    offset: int  # seconds into each interval, so the loops do not all fire on the same second
    timeout: float
    run_at_startup: bool = False

    @property
    def keep_result(self) -> float:
        return max(MIN_KEEP_RESULT_SECONDS, 3.0 * effective_interval(self.interval))


def job_specs(settings: NexusSettings) -> list[JobSpec]:
    hc = settings.health_check
    specs = [
        JobSpec(BUDGET_JOB, budget_job, settings.routing.budget.reconciliation_interval_secs, 4, 300.0),
        JobSpec(QUALITY_JOB, quality_job, settings.quality.metrics_interval_seconds, 2, 300.0),
        JobSpec(NODES_JOB, nodes_job, NODES_INTERVAL_SECONDS, 6, 30.0),
    ]
    # lifecycle operations wait at most a second to start; a tick runs whatever is pending, then ends
    lc = settings.lifecycle
    timeout = 2 * lc.load_timeout_seconds + lc.pull_timeout_seconds + 120
    specs.append(JobSpec(LIFECYCLE_JOB, lifecycle_job, LIFECYCLE_INTERVAL_SECONDS, 0, timeout))
    specs.append(JobSpec(FLEET_JOB, fleet_job, settings.fleet.interval_seconds, 3, 120.0))
    dc = settings.discovery
    if dc.enabled:
        # a tick is one browse window plus the resolution of what answered, under a lease of the same bound
        timeout = dc.browse_seconds * 4 + 30
        specs.append(JobSpec(DISCOVERY_JOB, discovery_job, dc.browse_interval_seconds, 1, timeout, True))
    if hc.enabled:
        # A tick is bounded by one probe timeout (probes run concurrently) plus a few Redis calls.
        specs.insert(0, JobSpec(HEALTH_JOB, health_job, hc.interval_seconds, 0, hc.timeout_seconds + 30.0, True))
    return specs


def cron_jobs(settings: NexusSettings, jobs: Collection[str] | None = None) -> list[CronJob]:
    """The cron jobs of `jobs` (default: all enabled loops)."""
    return [
        cron(
            spec.coroutine,
            name=spec.name,
            **cron_fields(spec.interval, spec.offset),
            run_at_startup=spec.run_at_startup,
            unique=True,
            timeout=spec.timeout,
            keep_result=spec.keep_result,
            max_tries=1,
        )
        for spec in job_specs(settings)
        if jobs is None or spec.name in jobs
    ]


def arq_settings(target: RedisTarget) -> RedisSettings:
    """arq's own connection settings for `target` (used when arq connects by itself: `arq nexus.worker.settings...`)."""
    if not target.sentinel:
        return RedisSettings.from_dsn(target.url)
    return RedisSettings(
        host=list(target.sentinels),
        sentinel=True,
        sentinel_master=target.master,
        database=target.db,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
    )


def worker_settings(
    settings: NexusSettings,
    redis_url: str | None = None,
    *,
    jobs: Collection[str] | None = None,
    clock: Callable[[], float] | None = None,
    poll_delay: float = 0.5,
) -> type:
    """A `WorkerSettings` class for arq (`arq.worker.create_worker(cls, **overrides)`).

    `redis_url` defaults to `[redis]` (a URL or sentinels); `jobs` and `clock` exist for tests
    and for `nexus serve`, which runs the same jobs in-process. The class also carries the parsed target as
    `nexus_redis_target`, from which `nexus.worker.main.build_worker` connects (Sentinel included)."""
    if not redis_url and not settings.redis.configured:
        raise ValueError("the worker needs a Redis URL (redis.url, NEXUS_REDIS_URL, --redis-url) or [redis] sentinels")
    target = settings.redis.target(redis_url)

    async def on_startup(ctx: dict[str, Any]) -> None:
        await seed_desired(ctx["redis"], settings.desired())  # no-op unless the store was never seeded
        wall = clock or settings.testing.clock()
        ctx[CTX_KEY] = WorkerContext(settings, clock=wall, http=new_session())

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        wc: WorkerContext | None = ctx.pop(CTX_KEY, None)
        if wc is not None and wc.http is not None:
            await wc.http.close()

    attrs = {
        "functions": [],
        "cron_jobs": cron_jobs(settings, jobs),
        "redis_settings": arq_settings(target),
        "nexus_redis_target": target,
        "queue_name": keys.WORKER_QUEUE,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "timezone": UTC,
        "poll_delay": poll_delay,
        "max_tries": 1,
        "job_timeout": 300,
        "keep_result": 3600,
        "health_check_interval": 60,
    }
    # arq reads only the class's own __dict__, so every attribute is set on it directly.
    return type("WorkerSettings", (), attrs)


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return worker_settings(load_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
