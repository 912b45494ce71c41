"""nexus.worker.settings with real arq machinery on the session Redis: the cron schedule, duplicate refusal
(arq's unique ids + keep_result, then our tick claim), and two workers sharing one schedule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.observed import read_observed
from nexus.core.periods import day_of, period_of
from nexus.core.telemetry_store import TelemetryRecord
from nexus.worker.discovery import DISCOVERY_JOB
from nexus.worker.fleet import FLEET_JOB
from nexus.worker.jobs import BUDGET_JOB, CTX_KEY, HEALTH_JOB, NODES_JOB, QUALITY_JOB, WorkerContext, budget_job
from nexus.worker.lifecycle import LIFECYCLE_JOB
from nexus.worker.settings import cron_jobs, job_specs, worker_settings
from tests.harness import eventually
from tests.stored import put_records, read_ticks
from tests.worker.conftest import WorkerFactory, record, run_tick, worker_settings_for


@pytest.fixture
async def pool(redis_server: EmbeddedRedis, redis: Redis) -> AsyncIterator[ArqRedis]:
    p = await create_pool(RedisSettings.from_dsn(redis_server.url), default_queue_name=keys.WORKER_QUEUE)
    yield p
    await p.aclose(close_connection_pool=True)


def test_cron_jobs_follow_the_configured_intervals() -> None:
    settings = worker_settings_for(
        health_check={"interval_seconds": 5, "timeout_seconds": 2},
        routing={"budget": {"reconciliation_interval_secs": 120}},
        quality={"metrics_interval_seconds": 45},
    )
    jobs = {cj.name: cj for cj in cron_jobs(settings)}
    assert list(jobs) == [HEALTH_JOB, BUDGET_JOB, QUALITY_JOB, NODES_JOB, LIFECYCLE_JOB, FLEET_JOB]
    assert jobs[LIFECYCLE_JOB].second == set(range(60))
    with_discovery = worker_settings_for(discovery={"enabled": True, "browse_interval_seconds": 5})
    assert {cj.name: cj.second for cj in cron_jobs(with_discovery)}[DISCOVERY_JOB] == set(range(1, 60, 5))
    assert jobs[HEALTH_JOB].second == set(range(0, 60, 5)) and jobs[HEALTH_JOB].run_at_startup
    assert (jobs[BUDGET_JOB].second, jobs[BUDGET_JOB].minute) == ({4}, set(range(0, 60, 2)))
    assert jobs[QUALITY_JOB].second == {2, 32}  # 45 s rounds down to 30 s
    assert jobs[NODES_JOB].second == set(range(0, 60, 3))  # a third of NODE_STALE_SECONDS (10 s), rounded down
    assert all(cj.unique and cj.max_tries == 1 for cj in jobs.values())
    assert jobs[HEALTH_JOB].timeout_s == 32.0
    assert jobs[HEALTH_JOB].keep_result_s == 300.0 and jobs[BUDGET_JOB].keep_result_s == 360.0


def test_health_can_be_disabled() -> None:
    settings = worker_settings_for(health_check={"enabled": False})
    assert HEALTH_JOB not in {s.name for s in job_specs(settings)}


def test_worker_settings_class_for_arq(redis_server: EmbeddedRedis) -> None:
    cls = worker_settings(worker_settings_for(), redis_server.url)
    assert cls.__name__ == "WorkerSettings"
    assert cls.timezone is UTC
    assert cls.queue_name == keys.WORKER_QUEUE
    assert cls.redis_settings.port == int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ValueError, match="Redis URL"):
        worker_settings(worker_settings_for())


async def test_a_finished_tick_refuses_a_late_duplicate(redis_server: EmbeddedRedis, pool: ArqRedis) -> None:
    """arq's own refusal: the cron job's keep_result leaves a result key that makes a second enqueue of
    the same tick id (a worker with a lagging clock, say) a no-op."""
    settings = worker_settings_for(routing={"budget": {"reconciliation_interval_secs": 3600}})
    now = time.time()
    tick = int(now // 3600 * 3600 * 1000)  # this hour's tick: a scheduled instant, never a pinned date
    job_id = f"{BUDGET_JOB}:{tick}"
    completed, result = await run_tick(redis_server.url, settings, BUDGET_JOB, tick, clock=lambda: now)
    assert completed == 1
    assert result["tick"] == tick and result["period"] == period_of(now)
    assert await pool.enqueue_job(BUDGET_JOB, _job_id=job_id, _queue_name=keys.WORKER_QUEUE) is None  # finished
    assert 3 * 3600 * 1000 - 60_000 < await pool.pttl(f"arq:result:{job_id}") <= 3 * 3600 * 1000  # 3 intervals


async def test_a_duplicate_delivery_is_counted_and_does_nothing(redis: Redis) -> None:
    """Our own layer under arq's: the job body claims its tick; a second delivery is refused."""
    settings = worker_settings_for()
    now = time.time()
    tick = int(now // 3600 * 3600 * 1000)
    await put_records(redis, [record("r1", now, cost_usd=0.5)])
    ctx = {"redis": redis, CTX_KEY: WorkerContext(settings, clock=lambda: now), "job_id": f"{BUDGET_JOB}:{tick}"}
    first = await budget_job(ctx)
    assert first["budgets"] == {"global": "normal"}
    assert (await read_observed(redis)).spend["global"].spend_usd == pytest.approx(0.5)
    await put_records(redis, [record("r2", now, cost_usd=0.5)])
    assert await budget_job(ctx) == {"duplicate": True}
    # r2 is counted (its batch wrote the aggregate) but not observed: that waits for the next tick
    assert (await read_observed(redis)).spend["global"].spend_usd == pytest.approx(0.5)
    assert await read_ticks(redis, BUDGET_JOB, day_of(tick / 1000)) == {tick: 2}


async def test_two_workers_on_one_schedule_run_each_tick_once(redis: Redis, workers: WorkerFactory) -> None:
    """Two workers with the same per-second budget schedule, records arriving while they run: every tick
    ran exactly once (counted), and the last observed the sum of all records."""
    settings = worker_settings_for(routing={"budget": {"reconciliation_interval_secs": 1}})
    t0 = time.time()
    written: list[TelemetryRecord] = []

    async def produce() -> None:
        for batch in range(6):
            now = time.time()
            recs = [
                record(
                    f"b{batch}r{i}",
                    now,
                    backend=f"b{i % 3}",
                    model="llama3:8b",
                    key=("k1", None)[i % 2],
                    cost_usd=0.001 * (i + 1),
                    prompt_tokens=i,
                )
                for i in range(10)
            ]
            await put_records(redis, recs)
            written.extend(recs)
            await asyncio.sleep(0.3)

    w1 = await workers(settings, jobs=[BUDGET_JOB])
    w2 = await workers(settings, jobs=[BUDGET_JOB])
    await produce()
    days = sorted({day_of(t0), day_of(time.time() + 5)})

    async def ticks() -> dict[int, int]:
        out: dict[int, int] = {}
        for day in days:
            out.update(await read_ticks(redis, BUDGET_JOB, day))
        return out

    async def settled() -> bool:
        spend = (await read_observed(redis)).spend.get("global")
        if spend is None:
            return False
        # every record in the period its own timestamp names (a run may cross a month boundary)
        total = sum(r.cost_usd for r in written if period_of(r.ts) == spend.period)
        return len(await ticks()) >= 4 and abs(spend.spend_usd - total) < 1e-9

    await eventually(settled, timeout=15)
    await w1.stop()
    await w2.stop()
    counted = await ticks()
    assert set(counted.values()) == {1}, counted
    assert w1.worker.jobs_complete + w2.worker.jobs_complete == len(counted)
    assert all(tick % 1000 == 123 for tick in counted)  # arq's cron microsecond offset: scheduled ticks
    assert len(written) == 60
