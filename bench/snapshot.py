"""Snapshot build cost at 100, 1,000 and 5,000 backends (5,000 is the desired-state limit).

For each size, against a real embedded Redis holding the config (3 models per backend, health for each):

- `full`: what a router node does when the config changed: one read, decode + validate, build (ms, median);
- `poll`: a refresh with the config unchanged (new health and spend only): the decoded config is reused (ms);
- `admin write`: one `put_backend` at that size (read-modify-write with full validation) (ms);
- `snapshot MiB`: memory the decoded config and the snapshot hold (tracemalloc), and the process RSS;
- `loop lag`: the worst delay an event-loop ticker (every 1 ms) saw while the full build ran on the loop
  itself versus in a worker thread, as router nodes run it (ms).

    python bench/snapshot.py [--sizes 100,1000,5000] [--repeat 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import BackendConfig, DesiredConfig, RoutingConfig, load_settings
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.fetch import build_state, fetch_state
from nexus.core.model import HealthState
from nexus.core.observed import HealthRecord
from nexus.core.state import put_backend, seed_desired
from nexus.worker.store import compare_and_set, health_change

TYPES = ("vllm", "ollama", "llamacpp", "generic")


def desired_of(n: int) -> DesiredConfig:
    backends = [
        BackendConfig(
            name=f"b{i:05d}",
            url=f"http://10.{i // 65536}.{i // 256 % 256}.{i % 256}:8000",
            type=TYPES[i % len(TYPES)],
            tier=1 + i % 5,
            models=[{"name": "llama3:70b", "context_length": 8192}, f"m-{i % 50}", f"n-{i % 13}"],
        )
        for i in range(n)
    ]
    return DesiredConfig(backends=backends, routing=RoutingConfig(aliases={"chat": "llama3:70b"}))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def lag_during(work, *, threaded: bool) -> float:
    """Worst event-loop delay (ms) seen by a 1 ms ticker while `work()` runs inline or in a thread."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, (time.perf_counter() - t - 0.001) * 1000.0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    if threaded:
        await asyncio.to_thread(work)
    else:
        work()
        await asyncio.sleep(0.002)  # let the ticker see the delay
    done.set()
    await task
    return worst


async def measure(redis: Redis, n: int, repeat: int) -> dict[str, float]:
    settings = load_settings(overrides={"health_check": {"interval_seconds": 3600}})
    await redis.flushall()
    desired = desired_of(n)
    await seed_desired(redis, desired)
    now = time.time()
    # stored as the health worker stores them (its compare-and-set writer; absent before, hence None)
    record = HealthRecord(state=HealthState.HEALTHY, checked_at=now, latency_ema_ms=20.0)
    await compare_and_set(redis, keys.OBSERVED_HEALTH, [health_change(b.name, None, record) for b in desired.backends])

    full, poll, writes = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        state = await fetch_state(redis)
        cache, snap = build_state(state, None, settings, time.time())
        full.append((time.perf_counter() - t) * 1000.0)
        t = time.perf_counter()
        state = await fetch_state(redis, snap.version, state.epoch)
        build_state(state, cache, settings, time.time())
        poll.append((time.perf_counter() - t) * 1000.0)
    for i in range(max(1, repeat // 2)):
        t = time.perf_counter()
        await put_backend(redis, desired.backends[i].model_copy(update={"priority": 7}))
        writes.append((time.perf_counter() - t) * 1000.0)

    state = await fetch_state(redis)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = build_state(state, None, settings, time.time())
    held_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept

    def work() -> None:
        build_state(state, None, settings, time.time())

    inline = await lag_during(work, threaded=False)
    threaded = await lag_during(work, threaded=True)
    return {
        "backends": n,
        "full_ms": statistics.median(full),
        "poll_ms": statistics.median(poll),
        "admin_write_ms": statistics.median(writes),
        "held_mib": held_bytes / 2**20,
        "rss_mib": rss_mib(),
        "loop_lag_inline_ms": inline,
        "loop_lag_threaded_ms": threaded,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp) as server:
        redis = Redis.from_url(server.url)
        try:
            for n in (int(s) for s in args.sizes.split(",")):
                rows.append(await measure(redis, n, args.repeat))
        finally:
            await redis.aclose()
    head = (f"{'backends':>8} {'full ms':>9} {'poll ms':>8} {'admin write ms':>15} {'held MiB':>9} {'RSS MiB':>8} "
            f"{'lag inline ms':>14} {'lag thread ms':>14}")
    print(head)
    for r in rows:
        print(f"{r['backends']:>8} {r['full_ms']:>9.1f} {r['poll_ms']:>8.1f} {r['admin_write_ms']:>15.1f} "
              f"{r['held_mib']:>9.1f} {r['rss_mib']:>8.0f} {r['loop_lag_inline_ms']:>14.1f} "
              f"{r['loop_lag_threaded_ms']:>14.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
