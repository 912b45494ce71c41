"""Fault tests on a local cluster of real processes (issue 6): Redis, 3 router nodes, 2 workers, admin, fakes.

What each test shows (the numbers each one measures are printed with `-s`):

- load spread and exact spend: thousands of requests over the 3 replicas (directly, then through nginx);
  every replica serves, and the spend Nexus records (live counter, and the aggregates in the spend
  report) equals the sum of per-request costs the clients computed from `usage` x prices.
- SIGKILL of a router under load: the other replicas keep serving; only requests to the killed replica
  that were in flight at the kill or sent after it fail, with connection errors; the dead node's
  in-flight gauge expires (`keys.INFLIGHT_TTL_SECONDS`) so cluster load returns to 0. Telemetry guarantee
  under SIGKILL: records are flushed every `telemetry.flush_interval_ms`; a SIGKILLed node loses only what
  it buffered since its last flush, i.e. requests it answered in its last flush window. Surviving
  replicas lose nothing.
- Redis down and back under load (AOF on, clean SHUTDOWN so nothing acknowledged is lost): requests keep
  succeeding on the nodes' snapshots, telemetry buffers and is replayed, totals match exactly.
- every worker SIGKILLed: observed state goes stale (admin nodes view, router metrics), backend health
  becomes unknown after twice the health interval; one restarted worker heals it.
- a backend dies (SIGKILL, or its connections closed): every client request still succeeds by failover
  from the moment of death; the health worker marks it unhealthy and each replica stops sending it
  anything within (failure_threshold + 1) health intervals plus one snapshot poll (plus 1 s of slack).
  Until then every request on a replica tries the dead backend first: there is no passive ejection, the
  per-request failover is what keeps clients whole.
- graceful shutdown: SIGTERM on a router with long streams in flight turns /ready 503 first, lets the
  streams finish, then exits 0; SIGTERM on a worker mid-run exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.observed import read_inflight
from nexus.core.periods import day_of
from nexus.core.pipeline.requirements import extract_requirements
from nexus.core.telemetry_store import read_live_spend
from nexus.tools.devcluster import FakeSpec, LocalCluster
from tests.clock import knobs_for, steady_period
from tests.harness import eventually

PIN, POUT = 3000.0, 15000.0  # USD per 1M tokens: a request costs a few cents, so "to the cent" means something
FLUSH_MS = 50
HEALTH = {"interval_seconds": 1, "timeout_seconds": 0.5, "failure_threshold": 2, "recovery_threshold": 1}
POLL = 0.5
CENT = 0.005  # "equal to the cent"


def cloud(name: str, priority: int = 0, **options: Any) -> FakeSpec:
    return FakeSpec(
        name,
        type="generic",
        options=options,
        backend={
            "priority": priority,
            "max_concurrency": 10_000,  # these tests are about faults, not about queueing at capacity
            "models": [{"name": "m", "input_usd_per_1m": PIN, "output_usd_per_1m": POUT}],
        },
    )


# One budget period for the whole module: spend is compared with what clients paid, so a real month end
# passing mid-test must not split it over two periods.
BUDGET_PERIOD = steady_period()


def config(**routing: Any) -> dict[str, Any]:
    return {
        "testing": knobs_for(BUDGET_PERIOD),
        "redis": {"snapshot_poll_seconds": POLL},
        "telemetry": {"flush_interval_ms": FLUSH_MS},
        "health_check": HEALTH,
        "routing": {"budget": {"reconciliation_interval_secs": 1}, **routing},
    }


def body_of(i: int) -> dict[str, Any]:
    """Varied prompts; max_tokens (1-3) below the reply's length, so the fake's completion_tokens equals it."""
    return {"model": "m", "messages": [{"role": "user", "content": "hello " * (i % 7 + 1)}], "max_tokens": i % 3 + 1}


def price(prompt: int, completion: int) -> float:
    return (prompt * PIN + completion * POUT) / 1_000_000.0


# -- client-side load ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class Outcome:
    i: int
    target: int  # index into the URL list
    start: float  # time.monotonic()
    end: float
    status: int | None = None  # None: no HTTP answer (connection error)
    error: str = ""
    rid: str = ""
    backend: str = ""
    reason: str = ""
    cost: float = 0.0  # from the reply's usage x prices
    estimated: float = 0.0  # X-Nexus-Cost-Estimated
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200


async def _one(http: aiohttp.ClientSession, url: str, i: int, target: int, body: dict[str, Any]) -> Outcome:
    start = time.monotonic()
    try:
        async with http.post(f"{url}/v1/chat/completions", json=body) as r:
            data = orjson.loads(await r.read())
            out = Outcome(i, target, start, time.monotonic(), r.status, rid=r.headers.get("X-Nexus-Request-Id", ""))
            if r.status == 200:
                usage = data["usage"]
                out.backend = r.headers["X-Nexus-Backend"]
                out.reason = r.headers["X-Nexus-Route-Reason"]
                out.estimated = float(r.headers["X-Nexus-Cost-Estimated"])
                out.prompt_tokens, out.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
                out.cost = price(out.prompt_tokens, out.completion_tokens)
            else:
                out.error = str(data)
            return out
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(i, target, start, time.monotonic(), error=f"{type(exc).__name__}: {exc}")


async def run_load(
    urls: Sequence[str],
    n: int,
    *,
    concurrency: int = 32,
    results: list[Outcome] | None = None,
    stop: asyncio.Event | None = None,
    body: Callable[[int], dict[str, Any]] = body_of,
) -> list[Outcome]:
    """`n` requests (fewer if `stop` is set), request i to urls[i % len(urls)], `concurrency` at a time.
    A session of its own, so no keep-alive connection outlives the phase and goes stale between phases."""
    results = [] if results is None else results
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def worker() -> None:
            while (stop is None or not stop.is_set()) and (i := next(counter)) < n:
                target = i % len(urls)
                results.append(await _one(http, urls[target], i, target, body(i)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


# -- observing the cluster ---------------------------------------------------------------------------------
@pytest.fixture
async def connect() -> AsyncIterator[Callable[[LocalCluster], Redis]]:
    """A Redis client on a cluster's Redis (closed at teardown)."""
    clients: list[Redis] = []

    def make(c: LocalCluster) -> Redis:
        client = Redis.from_url(c.redis.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=1)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def admin(http: aiohttp.ClientSession, c: LocalCluster, path: str) -> Any:
    assert c.admin is not None
    async with http.get(f"{c.admin.url}/admin/v1{path}", headers=c.admin_headers) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


async def metrics(http: aiohttp.ClientSession, url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name from a router's /metrics."""
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def served(http: aiohttp.ClientSession, url: str) -> int:
    """nexus_requests_total of successful chat completions on one router."""
    m = await metrics(http, url)
    return int(
        sum(
            v
            for labels, v in m.get("nexus_requests_total", [])
            if labels.get("endpoint") == "/v1/chat/completions" and labels.get("status") == "200"
        )
    )


async def ready(http: aiohttp.ClientSession, url: str) -> tuple[int | None, dict[str, Any]]:
    """(status, body) of /ready on a fresh connection; (None, {}) when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as fresh,
            fresh.get(f"{url}/ready") as r,
        ):
            return r.status, await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError):
        return None, {}


def _days() -> list[str]:
    now = time.time()
    return sorted({day_of(now + d * 86400.0) for d in (-1, 0, 1)})  # a run may straddle midnight UTC


async def live_spend(redis: Redis) -> float:
    return (await read_live_spend(redis, BUDGET_PERIOD.name(time.time()))).get("global", 0.0)


def client_cost(outcomes: Sequence[Outcome]) -> float:
    return sum(o.cost for o in outcomes if o.ok)


async def assert_spend_matches(
    http: aiohttp.ClientSession, c: LocalCluster, redis: Redis, want_requests: int, want_usd: float
) -> dict[str, Any]:
    """Live spend, then the spend report (the aggregates the nodes' batches wrote) count exactly `want_requests`
    requests costing `want_usd`."""
    await eventually(lambda: _spend_close(redis, want_usd), timeout=10, interval=0.05)

    async def counted() -> dict[str, Any] | None:
        report = await admin(http, c, "/spend")
        done = report["requests"] == want_requests and abs(report["total_usd"] - want_usd) < CENT
        return report if done else None

    report = await eventually(counted, timeout=15, interval=0.2)
    assert abs(report["live_spend"]["global"] - want_usd) < CENT
    assert report["errors"] == 0
    return report


async def _spend_close(redis: Redis, want: float) -> bool:
    return abs(await live_spend(redis) - want) < CENT


# -- 1. load spread over the replicas, spend exact to the cent -------------------------------------------
async def test_load_spreads_over_every_replica_and_spend_is_exact(cluster, http, connect):
    c = await cluster(routers=3, workers=2, fakes=[cloud("cloud")], config=config(), nginx=True)
    redis = connect(c)
    urls = [r.url for r in c.routers]

    t0 = time.monotonic()
    direct = await run_load(urls, 3000, concurrency=32)
    took = time.monotonic() - t0
    assert [o for o in direct if not o.ok] == []
    # what each replica says it served is exactly what the clients sent it (request i went to replica i % 3)
    per_replica = [await served(http, u) for u in urls]
    assert per_replica == [1000, 1000, 1000]
    assert len({o.rid for o in direct}) == 3000

    # through nginx: the clients cannot pick, the balancer spreads
    before = [await served(http, u) for u in urls]
    assert c.nginx is not None
    via_lb = await run_load([c.nginx.url], 600, concurrency=16, body=lambda i: body_of(i + 3000))
    assert [o for o in via_lb if not o.ok] == []
    deltas = [await served(http, u) - b for u, b in zip(urls, before, strict=True)]
    assert sum(deltas) == 600 and all(d > 0 for d in deltas), deltas

    everything = direct + via_lb
    want = client_cost(everything)
    assert len({o.rid for o in everything}) == len(everything)
    report = await assert_spend_matches(http, c, redis, len(everything), want)

    # the estimate: output tokens equal max_tokens (so that part agrees with the bill), input tokens are
    # the router's heuristic, so the header sum is what that heuristic predicts for these bodies
    assert all(o.completion_tokens == body_of(o.i)["max_tokens"] for o in direct)
    expected_estimate = sum(
        price(extract_requirements(b).input_tokens, b["max_tokens"]) for b in map(body_of, range(3600))
    )
    est = sum(o.estimated for o in everything)
    assert abs(est - expected_estimate) < CENT
    print(
        f"\n3000 direct requests in {took:.2f}s ({3000 / took:.0f}/s), per replica {per_replica}; "
        f"600 via nginx split {deltas}; client cost ${want:.6f}, live ${report['live_spend']['global']:.6f}, "
        f"report ${report['total_usd']:.6f} over {report['requests']} requests; "
        f"sum of X-Nexus-Cost-Estimated ${est:.6f} (input-token heuristic off by ${est - want:+.6f})"
    )


# -- 2. SIGKILL a router under load ---------------------------------------------------------------------------
KILL_WINDOW_SLACK = 0.5  # seconds beyond one flush interval: a flush's own duration and event-loop lag


async def test_sigkill_router_under_load(cluster, http, connect):
    c = await cluster(routers=3, workers=2, fakes=[cloud("cloud", latency_ms=20)], config=config())
    redis = connect(c)
    urls = [r.url for r in c.routers]
    dead_k = 1
    dead = c.routers[dead_k]
    results: list[Outcome] = []
    load = asyncio.create_task(run_load(urls, 2400, concurrency=32, results=results))

    await eventually(lambda: len(results) >= 600 or load.done(), timeout=30)
    assert not load.done()
    gauge = keys.inflight(dead.name)
    t_kill = time.monotonic()
    await asyncio.to_thread(c.kill, dead, signal.SIGKILL)
    t_dead = time.monotonic()
    # the dead node's last gauge is still counted: nobody will ever rewrite it
    dead_gauge = {b: int(n) for b, n in (await redis.hgetall(gauge)).items()}
    await load
    # the surviving replicas' own counters agree with what their clients saw answered
    for k, url in enumerate(urls):
        if k != dead_k:
            assert await served(http, url) == sum(1 for o in results if o.target == k and o.ok), url

    to_dead = [o for o in results if o.target == dead_k]
    failures = [o for o in results if not o.ok]
    # the other replicas answered everything, before and after the kill
    assert [o for o in results if o.target != dead_k and not o.ok] == []
    # every failure is a connection error on the killed replica that had not been answered when it was killed
    assert all(o.target == dead_k and o.status is None and o.end >= t_kill for o in failures), failures[:3]
    # in flight at the kill: sent before the signal, not answered by then; racing: sent while the process was
    # dying (between the signal and its reaping); after: sent to a dead port
    in_flight = [o for o in to_dead if o.start <= t_kill and o.end >= t_kill]
    racing = [o for o in to_dead if t_kill < o.start <= t_dead]
    after = [o for o in to_dead if o.start > t_dead]
    assert after and all(not o.ok for o in after)  # nothing answers on a dead port
    failed_in_flight = [o for o in failures if o.start <= t_kill]
    assert set(map(id, failures)) <= set(map(id, in_flight + racing + after))
    assert len(failed_in_flight) <= len(in_flight) <= 32

    # cluster-wide in-flight returns to 0: live nodes at once, the dead node's gauge when its TTL runs out
    assert sum(dead_gauge.values()) > 0, "the killed node had requests in flight; its gauge should hold them"

    async def drained() -> bool:
        return not any((await read_inflight(redis)).values())

    await eventually(drained, timeout=keys.INFLIGHT_TTL_SECONDS + 5, interval=0.1)
    recovered = time.monotonic() - t_dead
    assert recovered <= keys.INFLIGHT_TTL_SECONDS + 2

    # telemetry: every success on a surviving replica is recorded; on the killed one, at most the
    # requests it answered in its last flush window (its unflushed buffer) are missing
    ok_all = [o for o in results if o.ok]
    ok_dead = [o for o in to_dead if o.ok]
    window = FLUSH_MS / 1000.0 + KILL_WINDOW_SLACK
    must = [o for o in ok_all if o.target != dead_k or o.end < t_kill - window]  # flushed before the kill
    survivors = [u for k, u in enumerate(urls) if k != dead_k]
    await eventually(lambda: _all_flushed(http, survivors), timeout=10, interval=0.05)
    report = await eventually(lambda: _counting_at_least(http, c, len(must)), timeout=10, interval=0.05)
    missing = len(ok_all) - report["requests"]
    assert 0 <= missing <= len(ok_all) - len(must)  # no phantom, no failed request billed, no flushed one lost
    # spend: what was recorded, live and in the aggregates, between what had to be and what could be
    assert client_cost(must) - CENT <= report["total_usd"] <= client_cost(ok_all) + CENT
    await eventually(lambda: _spend_close(redis, report["total_usd"]), timeout=10, interval=0.05)
    oldest = max((t_kill - o.end for o in ok_dead if o.end >= t_kill - window), default=0.0)
    print(
        f"\nSIGKILL router-{dead_k}: {len(failures)} of {len(results)} requests failed "
        f"({len(failed_in_flight)} of the {len(in_flight)} in flight on it at the kill, {len(racing)} sent while "
        f"it died, {len(after)} sent after); dead gauge {dead_gauge}; in-flight back to 0 "
        f"{recovered:.1f}s after the kill (TTL {keys.INFLIGHT_TTL_SECONDS:g}s); {missing} of "
        f"{len(ok_dead)} answers of the killed node unrecorded (its last flush window: answered at most "
        f"{oldest * 1000:.0f} ms before the kill; flush interval {FLUSH_MS} ms)"
    )


async def _counting_at_least(http: aiohttp.ClientSession, c: LocalCluster, n: int) -> dict[str, Any] | None:
    report = await admin(http, c, "/spend")
    return report if report["requests"] >= n else None


# -- 3. Redis down and back under load ---------------------------------------------------------------------------
async def test_redis_restart_under_load_loses_and_doubles_nothing(cluster, http, connect):
    c = await cluster(routers=3, workers=2, fakes=[cloud("cloud")], config=config())
    redis = connect(c)
    urls = [r.url for r in c.routers]
    results: list[Outcome] = []
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(urls, 100_000, concurrency=16, results=results, stop=stop))

    def ok_since(t: float) -> int:
        return sum(1 for o in results if o.ok and o.start > t)

    await eventually(lambda: ok_since(0) >= 300 or load.done(), timeout=30)
    t_down = time.monotonic()
    await asyncio.to_thread(c.redis.stop)  # SHUTDOWN: the AOF is fsynced, nothing acknowledged is lost

    async def every_node_sees_redis_down() -> bool:
        return all([(await ready(http, u))[1].get("redis_ok") is False for u in urls])

    buffered: dict[str, float] = {}

    async def buffering() -> bool:
        for r in c.routers:
            (_, value), *_ = (await metrics(http, r.url))["nexus_telemetry_buffered"]
            buffered[r.name] = max(buffered.get(r.name, 0.0), value)
        return all(v > 0 for v in buffered.values()) and len(buffered) == 3

    await eventually(every_node_sees_redis_down, timeout=15, interval=0.1)
    # an outage of a few worker polls (0.5 s each) with plenty of traffic in it
    await eventually(lambda: (ok_since(t_down) >= 300 and time.monotonic() - t_down >= 2.0) or load.done(), timeout=30)
    await eventually(buffering, timeout=10, interval=0.05)
    assert all([(await ready(http, u))[0] == 200 for u in urls])  # still ready: routing on the last snapshot
    during = ok_since(t_down)
    t_up = time.monotonic()
    await asyncio.to_thread(c.redis.start)  # same port, AOF replayed

    async def every_node_sees_redis_up() -> bool:
        return all([(await ready(http, u))[1].get("redis_ok") is True for u in urls])

    await eventually(every_node_sees_redis_up, timeout=15, interval=0.1)
    replayed_in = time.monotonic() - t_up
    await eventually(lambda: ok_since(t_up) >= 300 or load.done(), timeout=30)
    stop.set()
    await load
    assert not load.exception()
    assert [o for o in results if not o.ok] == [], "every request succeeds, Redis or no Redis"
    assert len({o.rid for o in results}) == len(results)
    # the workers rode out the outage
    assert all(w.popen is not None and w.popen.poll() is None for w in c.workers), [
        LocalCluster.log_tail(w) for w in c.workers
    ]

    await eventually(lambda: _all_flushed(http, urls), timeout=10, interval=0.05)
    report = await assert_spend_matches(http, c, redis, len(results), client_cost(results))
    print(
        f"\nRedis down {t_up - t_down:.2f}s under load: {during} requests answered meanwhile, "
        f"max telemetry buffered per node {buffered}; every node replayed within {replayed_in:.2f}s of Redis "
        f"returning; {len(results)} requests == {report['requests']} records, client cost "
        f"${client_cost(results):.6f} == report ${report['total_usd']:.6f}"
    )


async def _all_flushed(http: aiohttp.ClientSession, urls: Sequence[str]) -> bool:
    for u in urls:
        (_, value), *_ = (await metrics(http, u))["nexus_telemetry_buffered"]
        if value:
            return False
    return True


# -- 4. every worker killed: observed state goes stale, one worker heals it -------------------------------------
async def test_all_workers_killed_then_one_restarted(cluster, http, connect):
    c = await cluster(routers=3, workers=2, fakes=[cloud("a"), cloud("b", priority=1)], config=config())
    interval = HEALTH["interval_seconds"]
    urls = [r.url for r in c.routers]

    async def health() -> dict[str, str]:
        return {b["name"]: b["health"] for b in await admin(http, c, "/health")}

    async def nodes() -> list[dict[str, Any]]:
        return await admin(http, c, "/nodes")

    async def observed_ages() -> list[float]:
        out = []
        for u in urls:
            (_, value), *_ = (await metrics(http, u))["nexus_observed_state_age_seconds"]
            out.append(value)
        return out

    async def healthy_and_fresh() -> bool:
        if set((await health()).values()) != {"healthy"}:
            return False
        ns = await nodes()
        fresh = [n for n in ns if n["status"] == "up" and (n["observed_age_seconds"] or 1e9) < 2 * interval]
        return len(fresh) == 3 and max(await observed_ages()) < 2 * interval

    await eventually(healthy_and_fresh, timeout=20, interval=0.1)

    t_kill = time.monotonic()
    for w in c.workers:
        await asyncio.to_thread(c.kill, w, signal.SIGKILL)

    async def stale() -> bool:
        ns = await nodes()
        return (
            len(ns) == 3
            and all(n["observed_age_seconds"] > 2 * interval for n in ns)
            and min(await observed_ages()) > 2 * interval
            and set((await health()).values()) == {"unknown"}
        )

    await eventually(stale, timeout=15, interval=0.1)
    went_stale = time.monotonic() - t_kill
    # nothing observes the backends, yet routing goes on: unknown is not unhealthy
    outcomes = await run_load(urls, 60, concurrency=6)
    assert [o for o in outcomes if not o.ok] == []

    t_start = time.monotonic()
    c.start_worker(c.workers[0])
    await eventually(healthy_and_fresh, timeout=30, interval=0.1)
    healed = time.monotonic() - t_start
    print(
        f"\nall workers SIGKILLed: stale (observed age > {2 * interval:g}s everywhere, health unknown) after "
        f"{went_stale:.2f}s; one worker restarted: healthy and fresh again after {healed:.2f}s"
    )


# -- 5. a backend dies: failover at once, health diverts within (F + 1) intervals ---------------------------------
@pytest.mark.parametrize("how", ["sigkill", "close"])
async def test_backend_death_fails_over_at_once_and_health_diverts(cluster, http, how):
    fakes = [cloud("primary", priority=0), cloud("secondary", priority=1)]
    c = await cluster(routers=3, workers=2, fakes=fakes, config=config(strategy="priority_only"))
    urls = [r.url for r in c.routers]
    interval, threshold = HEALTH["interval_seconds"], HEALTH["failure_threshold"]
    primary = next(p for p in c.fakes if p.name == "fake-primary")

    async def record_of(name: str) -> dict[str, Any]:
        return next(b for b in await admin(http, c, "/health") if b["name"] == name)

    async def state_of(name: str) -> str:
        return (await record_of(name))["health"]

    await eventually(lambda: _all_healthy(http, c), timeout=20, interval=0.1)
    # steady state: past the workers' start-up ticks, two scheduled ticks have probed the primary
    checks: set[float] = set()

    async def ticked_twice() -> bool:
        checks.add((await record_of("primary"))["checked_at"])
        return len(checks) >= 3

    await eventually(ticked_twice, timeout=15, interval=0.1)
    warm = await run_load(urls, 30, concurrency=6)
    assert {(o.status, o.backend) for o in warm} == {(200, "primary")}

    results: list[Outcome] = []
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(urls, 100_000, concurrency=6, results=results, stop=stop))
    await eventually(lambda: len(results) >= 30 or load.done(), timeout=30)
    if how == "sigkill":
        await asyncio.to_thread(c.kill, primary, signal.SIGKILL)
    else:
        async with http.post(f"{primary.url}/_fake/config", json={"fail_mode": "close"}) as r:
            assert r.status == 200
    t_death = time.monotonic()

    async def marked_unhealthy() -> float | None:
        return time.monotonic() if await state_of("primary") == "unhealthy" else None

    t_unhealthy = await eventually(marked_unhealthy, timeout=15, interval=0.05)

    def diverted_everywhere() -> bool:
        # each replica has answered straight from secondary (its snapshot excludes primary) after death
        return all(
            any(o.target == k and o.start > t_death and o.ok and o.reason != "failover" for o in results)
            for k in range(3)
        )

    await eventually(diverted_everywhere, timeout=15, interval=0.05)
    n_at_divert = len(results)
    await eventually(lambda: len(results) >= n_at_divert + 60 or load.done(), timeout=30)
    stop.set()
    await load
    assert not load.exception()

    after = [o for o in results if o.start > t_death]
    # every client request succeeded, from the moment of death on
    assert [o for o in results if not o.ok] == []
    assert all(o.backend == "secondary" for o in after)
    divert: list[float] = []
    for k in range(3):
        mine = sorted((o for o in after if o.target == k), key=lambda o: o.start)
        first_direct = next(o for o in mine if o.reason != "failover")
        # once a replica routes around the dead backend, it never tries it again
        assert all(o.reason != "failover" for o in mine if o.start >= first_direct.end)
        divert.append(first_direct.start - t_death)
    bound = (threshold + 1) * interval + POLL + 1.0
    assert t_unhealthy - t_death <= bound
    assert max(divert) <= bound, divert
    if how == "close":  # the fake is alive and logs what reaches it: no chat request after the divert
        async with http.get(f"{primary.url}/_fake/requests") as r:
            log = await r.json()
        wall_death = time.time() - (time.monotonic() - t_death)
        late = [e for e in log if e["path"] == "/v1/chat/completions" and e["ts"] > wall_death + max(divert) + 0.2]
        assert late == []
    failovers = sum(1 for o in after if o.reason == "failover")
    print(
        f"\nbackend {how}: {len(after)} requests after death all succeeded ({failovers} by failover); "
        f"health worker marked it unhealthy after {t_unhealthy - t_death:.2f}s; replicas stopped trying it "
        f"after {', '.join(f'{d:.2f}s' for d in divert)} (bound {bound:g}s)"
    )


async def _all_healthy(http: aiohttp.ClientSession, c: LocalCluster) -> bool:
    return {b["health"] for b in await admin(http, c, "/health")} == {"healthy"}


# -- 6. graceful shutdown -------------------------------------------------------------------------------------------
@pytest.fixture
async def blackhole() -> AsyncIterator[str]:
    """URL of a server that accepts connections and never answers: a health probe of it lasts its timeout."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()


async def test_sigterm_router_drains_streams_and_worker_exits_zero(cluster, http, connect, blackhole):
    slow = cloud("slow", stream_chunks=10, chunk_delay_ms=150)  # ~1.5 s per stream
    # a backend nobody routes to whose probe hangs for the probe timeout: every health tick runs ~0.5 s
    hung = {"name": "hung", "url": blackhole, "type": "vllm", "models": ["other"]}
    c = await cluster(routers=3, workers=2, fakes=[slow], config={**config(), "backends": [hung]})
    redis = connect(c)
    victim = c.routers[0]
    body = {"model": "m", "messages": [{"role": "user", "content": "stream please"}], "stream": True}
    headers_seen = asyncio.Event()
    started: list[float] = []

    async def stream(session: aiohttp.ClientSession) -> tuple[int, bytes, float]:
        async with session.post(f"{victim.url}/v1/chat/completions", json=body) as r:
            first = await r.content.readany()
            started.append(time.monotonic())
            if len(started) == 6:
                headers_seen.set()
            rest = await r.content.read()
            return r.status, first + rest, time.monotonic()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        streams = [asyncio.create_task(stream(session)) for _ in range(6)]
        await asyncio.wait_for(headers_seen.wait(), 10)
        t_term = time.monotonic()
        assert victim.popen is not None
        victim.popen.send_signal(signal.SIGTERM)

        async def not_ready() -> float | None:
            status, info = await ready(http, victim.url)
            return time.monotonic() if status == 503 and info.get("draining") is True else None

        t_503 = await eventually(not_ready, timeout=5, interval=0.02)
        outcomes = await asyncio.gather(*streams)
    t_streams = max(end for _, _, end in outcomes)
    for status, payload, _ in outcomes:
        assert status == 200
        events = [line for line in payload.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]" and b'"error"' not in payload
        text = "".join(
            (orjson.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1]
        )
        assert text == "echo: stream please"
    code = await eventually(lambda: victim.popen.poll() is not None and (victim.popen.returncode,), timeout=30)
    t_exit = time.monotonic()
    assert code == (0,), LocalCluster.log_tail(victim)
    assert t_term < t_503 < t_streams < t_exit
    # the other replicas never noticed
    others = await run_load([r.url for r in c.routers[1:]], 20, concurrency=4)
    assert [o for o in others if not o.ok] == []

    # the workers, SIGTERMed while one of them is running a health tick (arq's in-progress key is set): the
    # tick finishes or is cancelled safely, and both exit 0
    async def tick_running() -> bool:
        return any([k async for k in redis.scan_iter(match="arq:in-progress:*health*")])

    await eventually(tick_running, timeout=20, interval=0.02)
    t_w = time.monotonic()
    for w in c.workers:
        assert w.popen is not None
        w.popen.send_signal(signal.SIGTERM)
    codes = await eventually(
        lambda: all(w.popen.poll() is not None for w in c.workers) and [w.popen.returncode for w in c.workers],
        timeout=15,
    )
    assert codes == [0, 0], [LocalCluster.log_tail(w) for w in c.workers]
    print(
        f"\nSIGTERM router: /ready 503 after {(t_503 - t_term) * 1000:.0f} ms, 6 streams done after "
        f"{t_streams - t_term:.2f}s, exit 0 after {t_exit - t_term:.2f}s; workers SIGTERMed mid-tick exit 0 after "
        f"{time.monotonic() - t_w:.2f}s"
    )
