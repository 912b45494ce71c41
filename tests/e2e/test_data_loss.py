"""Redis restarted empty under load (issue 12, finding 4), with real processes on loopback: Redis, 3 router
nodes, 2 workers, the admin API and a fake backend.

Before: the running routers loaded config version 0 and answered 404 "available models: " to every request
while /ready said 200, the global budget became unlimited and `warn` (enforcement silently off), and spend
dropped to almost 0. Now (numbers printed with `-s`):
- every request keeps succeeding: nodes judge the empty store lost (`nexus.core.recovery`) and route on
  their snapshots, saying so (log line, `nexus_state_lost`, /ready `state_lost`);
- the desired config is restored from the freshest node at its own version (never lower than before), with
  the budget and policies intact, by itself;
- the live spend is put back from what the nodes last read, so the budget still counts what was spent; the
  admin spend report marks the period incomplete. What Redis lost for good is what was recorded after the
  nodes' last read of the live spend (about one flush interval of traffic), and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.state import read_desired
from tests.e2e.test_faults import BUDGET_PERIOD, _all_flushed, admin, client_cost, cloud, config, metrics, run_load
from tests.harness import eventually

LIMIT = 100_000.0  # a blocking limit far away: leases are large, so no renewal falls into the Redis restart


async def test_redis_restarted_empty_under_load(cluster, http):
    cfg = config(
        budget={"monthly_limit_usd": LIMIT, "hard_limit_action": "block_cloud", "reconciliation_interval_secs": 1},
        policies=[{"model_pattern": "m*", "min_tier": 1}],
    )
    c = await cluster(routers=3, workers=2, fakes=[cloud("cloud")], config=cfg)
    redis = Redis.from_url(c.redis.url, decode_responses=True)
    try:
        await _lose_everything(c, http, redis)
    finally:
        await redis.aclose()


async def _lose_everything(c, http, redis: Redis) -> None:
    urls = [r.url for r in c.routers]
    version_before, _ = await read_desired(redis)
    results: list = []
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(urls, 1_000_000, concurrency=16, results=results, stop=stop))

    def ok_since(t: float) -> int:
        return sum(1 for o in results if o.ok and o.start > t)

    await eventually(lambda: ok_since(0) >= 600 or load.done(), timeout=30)
    t_stop = time.monotonic()
    await asyncio.to_thread(c.redis.stop)
    for name in ("appendonly.aof", "dump.rdb"):  # the data is gone: Redis comes back empty
        (c.redis.data_dir / name).unlink(missing_ok=True)
    await asyncio.to_thread(c.redis.start)
    t_empty = time.monotonic()

    async def restored() -> int | None:
        version, desired = await read_desired(redis)
        return version if version >= version_before and desired.routing.budget.monthly_limit_usd == LIMIT else None

    version_after = await eventually(restored, timeout=15, interval=0.05)
    t_restored = time.monotonic()
    await eventually(lambda: ok_since(t_restored) >= 600 or load.done(), timeout=30)
    stop.set()
    await load

    failed = [o for o in results if not o.ok]
    assert failed == [], failed[:3]  # not one 404 (nor anything else): routing went on from the snapshots
    restores = [sum(v for _, v in (await metrics(http, u)).get("nexus_state_restores", [])) for u in urls]
    assert sum(restores) >= 1
    budgets = {b["scope"]: b for b in await admin(http, c, "/budgets")}
    assert budgets["global"]["monthly_limit_usd"] == LIMIT and budgets["global"]["hard_limit_action"] == "block_cloud"
    assert [p["model_pattern"] for p in await admin(http, c, "/policies")] == ["m*"]
    assert await redis.get(keys.CONFIG_EPOCH)

    # spend: what the clients paid, less at most what was recorded after the nodes' last read before the stop
    await eventually(lambda: _all_flushed(http, urls), timeout=15, interval=0.05)
    report = await admin(http, c, "/spend")
    assert report["period"] == BUDGET_PERIOD.name(time.time()) and report["incomplete"] is True
    live = report["live_spend"]["global"]
    want = client_cost(results)
    lost = want - live
    window = [o for o in results if o.ok and t_stop - 0.25 <= o.end <= t_stop]
    assert -1e-6 <= lost <= client_cost(window) + 1e-6, (lost, client_cost(window))  # never counted twice
    print(
        f"\nRedis restarted empty under load: {len(results)} requests, {len(failed)} failed; desired config "
        f"restored at version {version_after} (was {version_before}) {t_restored - t_empty:.2f}s after Redis came "
        f"back, by {sum(1 for r in restores if r)} node(s); live spend ${live:.6f} vs clients' ${want:.6f}: lost "
        f"${lost:.6f} (bound: requests answered in the 0.25 s before the stop, ${client_cost(window):.6f}); "
        f"report incomplete={report['incomplete']}, restored ${report['restored_usd'].get('global', 0.0):.6f}"
    )
