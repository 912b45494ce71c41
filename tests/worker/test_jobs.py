"""The loops end to end: real arq workers or tick bodies, real Redis, fake backends over real HTTP, and
what router nodes read back in their snapshot."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.model import BudgetStatus, HealthState, QualityStats
from nexus.core.observed import HealthRecord, read_inflight, read_observed, write_inflight
from nexus.core.periods import period_of
from nexus.core.reservations import read_reserved, read_unreconciled, report_admitted, reserve
from nexus.core.spend_report import read_spend_report
from nexus.core.state import load_snapshot, read_health, seed_desired
from nexus.core.telemetry_store import (
    NodeHeartbeat,
    read_heartbeats,
    read_live_spend,
    write_heartbeat,
)
from nexus.worker.jobs import HEALTH_JOB, QUALITY_JOB, run_budget, run_health, run_nodes
from nexus.worker.probe import new_session
from nexus.worker.store import mark_nodes_gone, read_heartbeats_raw
from tests.clock import next_day_start
from tests.harness import eventually
from tests.stored import put_records
from tests.worker.conftest import FakeFactory, RawServer, WorkerFactory, record, run_tick, worker_settings_for

RawFactory = Callable[..., Awaitable[RawServer]]


# -- health -----------------------------------------------------------------------------------------------
async def test_health_follows_a_backend_down_up_and_loading(
    redis: Redis, fakes: FakeFactory, workers: WorkerFactory
) -> None:
    fake = await fakes("gpu", ("m1", "m2"), context_length=4096)
    settings = worker_settings_for(
        [{"name": "gpu", "url": fake.url, "type": "vllm", "models": ["m1"]}],
        health_check={"interval_seconds": 1, "timeout_seconds": 0.5, "failure_threshold": 2, "recovery_threshold": 2},
    )

    async def current() -> HealthRecord | None:
        return (await read_health(redis)).get("gpu")

    async def when(check: Callable[[HealthRecord], bool]) -> HealthRecord:
        return await eventually(lambda: _matching(current(), check), timeout=10)

    await workers(settings, jobs=[HEALTH_JOB])
    up = await when(lambda r: r.state is HealthState.HEALTHY)  # the start-up tick: healthy at once
    assert [(m.name, m.context_length) for m in up.models] == [("m1", 4096), ("m2", 4096)]
    assert up.latency_ema_ms is not None
    snap = await load_snapshot(redis, settings, time.time())
    assert snap.backends["gpu"].health is HealthState.HEALTHY
    assert snap.backends["gpu"].models["m2"].context_length == 4096  # discovered, not configured
    assert [b.name for b in snap.by_model["m2"]] == ["gpu"]

    fake.configure(fail_mode="500")
    first = await when(lambda r: r.consecutive_failures >= 1)
    assert (first.state, first.consecutive_failures) == (HealthState.HEALTHY, 1)  # below the threshold
    down = await when(lambda r: r.state is HealthState.UNHEALTHY)
    assert down.consecutive_failures == 2
    assert (await load_snapshot(redis, settings, time.time())).backends["gpu"].health is HealthState.UNHEALTHY

    fake.configure(fail_mode="none")
    first_ok = await when(lambda r: r.consecutive_successes >= 1)
    assert (first_ok.state, first_ok.consecutive_successes) == (HealthState.UNHEALTHY, 1)
    back = await when(lambda r: r.state is HealthState.HEALTHY)
    assert back.consecutive_successes == 2

    fake.configure(loading_seconds=30)
    await when(lambda r: r.state is HealthState.LOADING)
    assert (await load_snapshot(redis, settings, time.time())).backends["gpu"].health is HealthState.LOADING
    # Observed health older than twice the interval is not trusted by the snapshot.
    later = await load_snapshot(redis, settings, time.time() + 2.5)
    assert later.backends["gpu"].health is HealthState.UNKNOWN


async def _matching(pending: Awaitable[HealthRecord | None], check: Callable[[HealthRecord], bool]) -> Any:
    rec = await pending
    return rec if rec is not None and check(rec) else None


async def test_a_health_tick_over_many_backends_takes_about_one_timeout(
    redis: Redis, fakes: FakeFactory, raw_servers: RawFactory
) -> None:
    timeout = 0.5
    ok = [await fakes(f"ok{i}") for i in range(25)]
    hung = [await raw_servers(None) for _ in range(5)]
    backends = [{"name": f"ok{i}", "url": f.url} for i, f in enumerate(ok)]
    backends += [{"name": f"hung{i}", "url": s.url} for i, s in enumerate(hung)]
    settings = worker_settings_for(backends, health_check={"timeout_seconds": timeout, "failure_threshold": 1})
    await seed_desired(redis, settings.desired())
    async with new_session() as session:
        t0 = time.perf_counter()
        summary = await run_health(redis, session, settings)
        elapsed = time.perf_counter() - t0
    assert (summary["healthy"], summary["unhealthy"], summary["written"]) == (25, 5, 30)
    assert elapsed < 3 * timeout, f"one tick over 30 backends took {elapsed:.2f} s with a {timeout} s timeout"


async def test_removed_backends_lose_their_health_record(redis: Redis, fakes: FakeFactory) -> None:
    fake = await fakes("a")
    settings = worker_settings_for([{"name": "a", "url": fake.url}])
    await seed_desired(redis, settings.desired())
    await redis.hset(keys.OBSERVED_HEALTH, "removed", orjson.dumps({"state": "healthy", "checked_at": 1.0}))
    async with new_session() as session:
        await run_health(redis, session, settings)
    assert set(await read_health(redis)) == {"a"}


# -- budget -----------------------------------------------------------------------------------------------
BUDGETS = {
    "budget": {"monthly_limit_usd": 1.0, "soft_limit_percent": 50},
    "key_budgets": {"team-a": {"monthly_limit_usd": 0.2}},
}


async def test_spend_crossing_thresholds_changes_the_status_router_nodes_read(redis: Redis) -> None:
    settings = worker_settings_for(routing=BUDGETS)
    await seed_desired(redis, settings.desired())
    now = time.time()

    async def statuses() -> tuple[BudgetStatus, BudgetStatus]:
        await run_budget(redis, settings, now)
        snap = await load_snapshot(redis, settings, now)
        return snap.budgets["global"].status(), snap.budgets["team-a"].status()

    assert await statuses() == (BudgetStatus.NORMAL, BudgetStatus.NORMAL)
    await put_records(redis, [record("r1", now, cost_usd=0.3)])
    assert await statuses() == (BudgetStatus.NORMAL, BudgetStatus.NORMAL)
    await put_records(redis, [record("r2", now, cost_usd=0.25, key="team-a")])
    assert await statuses() == (BudgetStatus.SOFT_LIMIT, BudgetStatus.HARD_LIMIT)
    await put_records(redis, [record("r3", now, cost_usd=0.5)])
    assert await statuses() == (BudgetStatus.HARD_LIMIT, BudgetStatus.HARD_LIMIT)
    observed = (await read_observed(redis)).spend
    assert observed["global"].spend_usd == pytest.approx(1.05)
    assert observed["global"].utilization == pytest.approx(1.05)
    assert observed["team-a"].limit_usd == 0.2


async def test_a_month_rollover_starts_at_zero_and_keeps_the_old_report(redis: Redis) -> None:
    """Around the next real month start (ahead of the real now, so every expiry Redis computes from these
    timestamps is in its future: Redis expires keys by its own clock, never by the tick's `now`)."""
    settings = worker_settings_for(routing={"budget": {"monthly_limit_usd": 5.0}})
    await seed_desired(redis, settings.desired())
    new_month = next_day_start(1)
    old, new = period_of(new_month - 1), period_of(new_month)
    last_minute = new_month - 60
    await put_records(redis, [record("old1", last_minute - 10, cost_usd=2.0)])
    await run_budget(redis, settings, last_minute)
    assert (await load_snapshot(redis, settings, last_minute)).budgets["global"].spend_usd == pytest.approx(2.0)

    first_minute = new_month + 30
    late = record("old2", last_minute + 30, cost_usd=1.0)  # an old-month request that reached Redis late
    await put_records(redis, [late, record("new1", first_minute - 5, cost_usd=0.5)])
    summary = await run_budget(redis, settings, first_minute)
    assert summary["period"] == new
    budget = (await load_snapshot(redis, settings, first_minute)).budgets["global"]
    assert (budget.period, budget.spend_usd) == (new, pytest.approx(0.5))
    assert (await read_spend_report(redis, old))["total_usd"] == pytest.approx(3.0)
    assert (await read_spend_report(redis, new))["total_usd"] == pytest.approx(0.5)

    following = next_day_start(1, after=first_minute) + 60
    await run_budget(redis, settings, following)  # no traffic yet: the new period starts at zero
    assert (await load_snapshot(redis, settings, following)).budgets["global"].spend_usd == 0.0
    assert (await read_spend_report(redis, old))["total_usd"] == pytest.approx(3.0)  # still kept


async def test_a_key_budget_with_its_own_reset_day_rolls_over_on_its_own_day(redis: Redis) -> None:
    """Global periods start on the 1st, team-a's on the 15th: on the 15th, team-a starts again from zero
    while the global budget's period (and spend) carries on. Timestamps lie ahead of the real now, so every
    expiry Redis computes is still in the future (Redis expires keys by its own clock)."""
    routing = {
        "budget": {"monthly_limit_usd": 100.0},
        "key_budgets": {"team-a": {"monthly_limit_usd": 1.0, "reset_day": 15}},
    }
    settings = worker_settings_for(routing=routing)
    await seed_desired(redis, settings.desired())
    fifteenth = next_day_start(15)
    before, after = fifteenth - 3600, fifteenth + 3600
    calendar = settings.routing.calendar()
    await put_records(redis, [record("a1", before - 60, cost_usd=0.8, key="team-a")], calendar)
    summary = await run_budget(redis, settings, before)
    assert summary["periods"] == {"global": period_of(before, 1), "team-a": period_of(before, 15)}
    assert summary["budgets"] == {"global": "normal", "team-a": "soft_limit"}

    await put_records(redis, [record("a2", after - 60, cost_usd=0.3, key="team-a")], calendar)
    summary = await run_budget(redis, settings, after)
    assert summary["periods"]["global"] == period_of(before, 1)  # the global period goes on...
    assert summary["periods"]["team-a"] == period_of(after, 15) != period_of(before, 15)  # ...team-a's is new
    observed = (await read_observed(redis)).spend
    assert observed["global"].spend_usd == pytest.approx(1.1)
    assert (observed["team-a"].period, observed["team-a"].spend_usd) == (period_of(after, 15), pytest.approx(0.3))
    snap = await load_snapshot(redis, settings, after)
    assert (snap.budgets["team-a"].period, snap.budgets["team-a"].spend_usd) == (period_of(after, 15), 0.3)
    assert snap.budgets["team-a"].rule.reset_day == 15 and snap.budgets["global"].rule.reset_day == 1
    # the period that ended keeps its report: team-a's old spend is in the aggregate of its own old period
    assert (await read_spend_report(redis, period_of(before, 15)))["by_key"]["team-a"]["usd"] == pytest.approx(0.8)


async def test_the_budget_tick_repairs_a_live_counter_behind_the_aggregate(redis: Redis) -> None:
    settings = worker_settings_for(routing=BUDGETS)
    now = time.time()
    await put_records(redis, [record("r1", now, cost_usd=0.4, key="team-a")])
    period = (await run_budget(redis, settings, now))["period"]
    await redis.delete(keys.telemetry_spend(period))  # a Redis data loss took the live counter
    summary = await run_budget(redis, settings, now)
    assert sorted(summary["repaired"]) == ["global", "team-a"]
    assert float(await redis.hget(keys.telemetry_spend(period), "global")) == pytest.approx(0.4)


# -- quality ----------------------------------------------------------------------------------------------
async def test_quality_figures_match_a_hand_computed_expectation(redis_server: EmbeddedRedis, redis: Redis) -> None:
    now = time.time()
    settings = worker_settings_for([{"name": "gpu", "url": "http://127.0.0.1:9"}, {"name": "idle", "url": "http://x"}])
    await seed_desired(redis, settings.desired())
    recent = [record(f"ok{i}", now - 60 * i, backend="gpu", ttfb_ms=t) for i, t in enumerate([100, 200, 300] * 2)]
    recent += [
        record("gone", now - 30, backend="gpu", outcome="client_disconnected", ttfb_ms=800),  # a request, no error
        record("e1", now - 90, backend="gpu", outcome="http_500", status=500, ttfb_ms=5),
        record("e2", now - 100, backend="gpu", outcome="http_500", status=500, ttfb_ms=5),
        record("x:0", now - 120, backend="gpu", outcome="upstream_error", status=502),  # a failed attempt
        record("bad", now - 130, backend="gpu", outcome="http_400", status=400),  # the client's fault
    ]
    earlier = [record(f"old{i}", now - 3 * 3600 - i, backend="gpu", ttfb_ms=50) for i in range(5)]
    earlier += [record(f"mid{i}", now - 3 * 3600 - i, backend="gpu", outcome="midstream_error") for i in range(5)]
    stale = [record(f"ancient{i}", now - 25 * 3600, backend="gpu", outcome="upstream_error") for i in range(10)]
    await put_records(redis, recent + earlier + stale)

    completed, result = await run_tick(redis_server.url, settings, QUALITY_JOB, int(now * 1000), clock=lambda: now)
    assert (completed, result["backends_with_history"]) == (1, 1)
    stored = {k.decode(): orjson.loads(v) for k, v in (await redis.hgetall(keys.OBSERVED_QUALITY)).items()}
    assert set(stored) == {"gpu"}  # no history: no figures
    # 1 h: 11 requests (6 ok, 1 disconnected, 2 x 500, 1 failed attempt, 1 x 400), 3 errors;
    # TTFB over the 7 non-error requests that reported one: (2 x 600 + 800) / 7 ms.
    # 24 h: 21 requests, 8 errors (the 25 h old ones are outside every window).
    expected = QualityStats(3 / 11, 2000 / 7, 1 - 8 / 21, 11, 21)
    gpu = QualityStats(**stored["gpu"])
    assert (gpu.requests_1h, gpu.requests_24h) == (expected.requests_1h, expected.requests_24h)
    assert gpu.error_rate_1h == pytest.approx(expected.error_rate_1h)
    assert gpu.avg_ttfb_ms_1h == pytest.approx(expected.avg_ttfb_ms_1h, abs=0.01)
    assert gpu.success_rate_24h == pytest.approx(expected.success_rate_24h)
    snap = await load_snapshot(redis, settings, now)
    assert snap.backends["gpu"].quality == gpu
    assert "gpu" not in snap.failing  # 27 % errors, below the default 50 % threshold


# -- router-node liveness ---------------------------------------------------------------------------------
async def test_nodes_that_stopped_heart_beating_are_marked_gone(redis: Redis) -> None:
    now = time.time()
    for node, age, gone in [("alive", 1, False), ("dead", 60, False), ("ghost", 100, True), ("old", 2 * 86400, True)]:
        await write_heartbeat(redis, NodeHeartbeat(node=node, at=now - age, started_at=now - 3 * 86400, gone=gone))
    await write_inflight(redis, "dead", {"gpu": 3})
    await write_inflight(redis, "alive", {"gpu": 2})
    assert await read_inflight(redis) == {"gpu": 5}
    period = period_of(now)
    assert (await reserve(redis, "dead", 1.5, 1.5, [("global", 10.0, period)])).ok
    assert (await reserve(redis, "alive", 0.5, 0.5, [("global", 10.0, period)])).ok
    # the dead node had admitted 0.4 of its lease to requests it never recorded (issue 12, finding 8)
    await report_admitted(redis, "dead", {("global", period): 0.4})
    await report_admitted(redis, "alive", {("global", period): 0.2})

    assert await run_nodes(redis, now) == {
        "nodes": 4, "marked_gone": ["dead"], "removed": ["old"], "unreconciled_charged": {f"global|{period}": 0.4}}
    beats = {b.node: b.gone for b in await read_heartbeats(redis)}
    assert beats == {"alive": False, "dead": True, "ghost": True}
    assert await read_inflight(redis) == {"gpu": 2}  # cluster load recovers at once
    assert await read_reserved(redis, period) == {"global": 0.5}  # its budget reservations too
    # what it admitted is charged (budgets never under-count a crash), and shown apart from recorded spend
    assert await read_unreconciled(redis, period) == {"global": pytest.approx(0.4)}
    assert (await read_live_spend(redis, period))["global"] == pytest.approx(0.4)
    assert await run_nodes(redis, now) == {
        "nodes": 3, "marked_gone": [], "removed": [], "unreconciled_charged": {}}  # idempotent
    assert await read_unreconciled(redis, period) == {"global": pytest.approx(0.4)}


async def test_a_node_that_comes_back_is_not_marked_gone(redis: Redis) -> None:
    now = time.time()
    await write_heartbeat(redis, NodeHeartbeat(node="flaky", at=now - 60, started_at=now - 600))
    raw, stale = (await read_heartbeats_raw(redis))["flaky"]
    assert stale is not None
    # Between the worker's read and its write, the node's fresh heartbeat lands.
    await write_heartbeat(redis, NodeHeartbeat(node="flaky", at=now, started_at=now - 600))
    await write_inflight(redis, "flaky", {"gpu": 1})
    assert await mark_nodes_gone(redis, [(stale, raw)], []) == ([], [])
    assert [b.gone for b in await read_heartbeats(redis)] == [False]
    assert await read_inflight(redis) == {"gpu": 1}
