"""Budget period rollover on a live cluster of real processes (3 routers, workers, admin, one Redis).

The boundary is a few seconds ahead, never a real month end: every process runs with `[testing]
budget_period_seconds`, periods of a few seconds counted from an anchor (nexus/core/periods.py). The
code paths are the production ones (the same rule object names periods for telemetry, leases, workers and
admin; only the rule's arithmetic differs, and the calendar sweep in tests/core/test_periods.py
covers that). Redis expires keys by its own clock, which these tests never touch: every TTL is relative.

- A cluster blocked at its hard limit unblocks on every replica within 1 s after the new period starts,
  with the workers down over the boundary (so the last observation in Redis is the old period's
  hard_limit: routers must not take it for the new period's), and the old period's report is kept.
- Replicas whose clocks differ by up to 2 s write records around the boundary: each record is counted
  once, live and in the aggregates, in the period its own timestamp names.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from nexus.core.observed import read_observed
from nexus.core.periods import PeriodRule
from nexus.core.telemetry_store import read_heartbeats, read_live_spend
from nexus.tools.devcluster import FakeSpec, LocalCluster
from tests.clock import knobs_for
from tests.harness import eventually

PRICE_OUT = 5000.0  # USD per 1M output tokens: max_tokens 2 -> exactly $0.01, estimate and cost alike
COST = 2 * PRICE_OUT / 1e6
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
CLOUD = FakeSpec(
    "cloud",
    type="generic",
    backend={"models": [{"name": "m", "input_usd_per_1m": 0.0, "output_usd_per_1m": PRICE_OUT}],
             "max_concurrency": 1000},
)


def rule_for(seconds: int) -> PeriodRule:
    return PeriodRule(seconds=seconds, anchor=int(time.time()))


@pytest.fixture
async def redis_of() -> AsyncIterator[Callable[[LocalCluster], Redis]]:
    clients: list[Redis] = []

    def make(c: LocalCluster) -> Redis:
        client = Redis.from_url(c.redis.url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def post(http: aiohttp.ClientSession, url: str, key: str | None = None) -> tuple[int, float, str]:
    """(status, real time the answer arrived, request id)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.post(f"{url}/v1/chat/completions", json=BODY, headers=headers) as r:
        await r.read()
        return r.status, time.time(), r.headers.get("X-Nexus-Request-Id", "")


async def admin(http: aiohttp.ClientSession, c: LocalCluster, path: str) -> Any:
    assert c.admin is not None
    async with http.get(f"{c.admin.url}/admin/v1{path}", headers=c.admin_headers) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


async def until(moment: float) -> None:
    """Wait for a wall-clock instant (the boundary under test, computed from the rule: not a fixed delay)."""
    while (left := moment - time.time()) > 0:
        await asyncio.sleep(min(left, 0.05))


async def start_of_a_period(rule: PeriodRule, room: float) -> float:
    """Wait until at least `room` seconds of the current period are left; returns that period's end."""
    if rule.end(time.time()) - time.time() < room:
        await until(rule.end(time.time()))
    return rule.end(time.time())


async def test_a_blocked_cluster_unblocks_on_every_replica_within_a_second_of_the_new_period(cluster, http, redis_of):
    rule = rule_for(14)
    limit = 5 * COST
    c = await cluster(
        routers=3,
        workers=2,
        fakes=[CLOUD],
        config={
            "routing": {"budget": {"monthly_limit_usd": limit, "hard_limit_action": "block_all",
                                   "reconciliation_interval_secs": 1}},
            "telemetry": {"flush_interval_ms": 50},
            "redis": {"snapshot_poll_seconds": 0.2},
            "testing": knobs_for(rule),
        },
    )
    redis = redis_of(c)
    urls = [r.url for r in c.routers]

    async def routable() -> bool:
        # every replica's snapshot holds the backend healthy: spending the budget below then takes 5 requests,
        # not a slow start's worth of 503s that could outlast the period chosen next
        health = (await read_observed(redis)).health.get("cloud")
        if health is None or health.state.value != "healthy":
            return False
        beats = await read_heartbeats(redis)
        return len(beats) == len(urls) and all((b.observed_at or 0.0) >= health.checked_at for b in beats)

    await eventually(routable, timeout=30)
    boundary = await start_of_a_period(rule, room=9.0)
    old = rule.name(boundary - 1)

    # Spend the old period's budget, then see every replica refuse.
    served = 0
    for url in itertools.islice(itertools.cycle(urls), 20):
        status, _, _ = await post(http, url)
        served += status == 200
        if served == 5:
            break
    assert served == 5
    assert time.time() < boundary - 1.0, "spending the budget took most of the period (machine overloaded?)"
    for url in urls:
        assert (await post(http, url))[0] == 503, url

    async def observed_hard() -> bool:
        obs = (await read_observed(redis)).spend.get("global")
        return obs is not None and obs.period == old and obs.status.value == "hard_limit"

    await eventually(observed_hard, timeout=5)
    for w in c.workers:  # down over the rollover: the old period's hard_limit stays the last observation
        c.kill(w)
    assert time.time() < boundary - 0.5, "the old period ended before the cluster was blocked"

    async def first_success(url: str) -> tuple[float, list[tuple[int, float]]]:
        seen: list[tuple[int, float]] = []
        while True:
            status, at, _ = await post(http, url)
            seen.append((status, at))
            if status == 200:
                return at, seen
            assert at < boundary + 5, f"{url} still refuses 5 s into the new period"
            await asyncio.sleep(0.02)

    results = await asyncio.gather(*(first_success(u) for u in urls))
    for url, (at, seen) in zip(urls, results, strict=True):
        assert at >= boundary, f"{url} served before the old period ended (overshoot)"
        assert at - boundary <= 1.0, f"{url} unblocked {at - boundary:.2f} s after the new period began"
        assert all(s == 503 for s, t in seen if t < boundary)
    print(f"\nunblocked after the boundary: {[round(at - boundary, 3) for at, _ in results]} s")

    # The old period's report is kept: its spend, live and (once a worker is back) rolled up.
    assert (await read_live_spend(redis, old)).get("global") == pytest.approx(limit)
    c.start_worker(c.workers[0])

    async def old_report() -> dict[str, Any] | None:
        report = await admin(http, c, f"/spend?period={old}")
        return report if report["requests"] == 5 else None

    report = await eventually(old_report, timeout=20, interval=0.2)
    assert report["total_usd"] == pytest.approx(limit)
    current = await admin(http, c, "/spend")
    assert current["current_period"] == rule.name(time.time()) != old
    budgets = {b["scope"]: b for b in await admin(http, c, "/budgets")}
    assert budgets["global"]["period"] == rule.name(time.time())


async def test_records_of_skewed_replicas_count_once_in_the_period_their_own_timestamp_names(
    cluster, http, redis_of
):
    rule = rule_for(10)
    offsets = (-2.0, 0.0, 2.0)
    # one client key per replica: the aggregates' by-key figures then tell the replicas' requests apart
    secrets = [f"nx-rollover-replica-{i}-0123456789abcdef" for i in range(3)]
    key_ids = [f"key_00000000aa0{i}" for i in range(3)]
    c = await cluster(
        routers=3,
        workers=0,
        fakes=[CLOUD],
        config={
            "routing": {"budget": {"reconciliation_interval_secs": 1}},
            "telemetry": {"flush_interval_ms": 50},
            "testing": knobs_for(rule),
            "keys": [{"id": k, "name": k, "digest": "sha256:" + hashlib.sha256(s.encode()).hexdigest()}
                     for k, s in zip(key_ids, secrets, strict=True)],
        },
        router_env=[{"NEXUS_TESTING_CLOCK_OFFSET_SECONDS": str(o)} for o in offsets],
    )
    redis = redis_of(c)
    boundary = await start_of_a_period(rule, room=4.5)
    sent: dict[int, list[float]] = {i: [] for i in range(3)}  # replica -> real times its requests were sent

    async def stream(i: int) -> None:
        while time.time() < boundary + 3.5:
            t = time.time()
            status, _, _ = await post(http, c.routers[i].url, secrets[i])
            assert status == 200
            sent[i].append(t)
            await asyncio.sleep(0.05)

    await until(boundary - 3.5)
    await asyncio.gather(*(stream(i) for i in range(3)))
    old, new = rule.name(boundary - 1), rule.name(boundary)
    total = sum(len(ts) for ts in sent.values())

    async def all_counted() -> dict[str, dict[str, Any]] | None:
        reports = {p: await admin(http, c, f"/spend?period={p}") for p in (old, new)}
        return reports if sum(r["requests"] for r in reports.values()) >= total else None

    reports = await eventually(all_counted, timeout=10)
    assert sum(r["requests"] for r in reports.values()) == total  # each request counted once
    slack = 1.0  # a record's timestamp is its replica's clock when it was made: sent + offset + latency
    for i, times in sent.items():
        in_new = sum(1 for t in times if t + offsets[i] >= boundary + slack)  # surely the new period's
        in_old = sum(1 for t in times if t + offsets[i] < boundary - slack)  # surely the old one's
        got = {p: reports[p]["by_key"].get(key_ids[i], {}).get("requests", 0) for p in (old, new)}
        assert got[old] + got[new] == len(times), (i, got)
        assert got[old] >= in_old and got[new] >= in_new, (i, got, in_old, in_new)
    # Around the boundary the replicas disagree, and each record follows its own timestamp: the fast
    # replica's requests sent a second before the real boundary are in the new period, the slow one's a
    # second after it in the old one (the bounds above, on these non-empty sets).
    assert any(boundary - 2 + slack <= t < boundary for t in sent[2])
    assert any(boundary < t < boundary + 2 - slack for t in sent[0])

    for period, report in reports.items():  # live spend: once each, in its own period
        live = (await read_live_spend(redis, period)).get("global", 0.0)
        assert live == pytest.approx(COST * report["requests"]), period
        assert report["total_usd"] == pytest.approx(COST * report["requests"]), period
