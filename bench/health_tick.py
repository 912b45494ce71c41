"""One health tick over many backends, some of them slower than the probe timeout.

Starts N backends on loopback in this process: N - S fake backends (`nexus.tools.fake_backend`) and S slow
ones whose model list answers only after `--slow-ms` (the fake backend's `latency_ms` applies to inference
endpoints only, not to the `/v1/models` the probe reads). Runs `nexus.worker.jobs.run_health` (concurrent probes,
state machine, compare-and-set writes) against an embedded Redis, and prints the wall time. Probes run
concurrently, so the tick should take about one timeout, not one per slow backend
(docs/architecture.md#performance-goals style: measured here, never asserted by a timed test beyond a loose bound).

    python bench/health_tick.py [--backends 100] [--slow 10] [--timeout 1.0] [--slow-ms 5000] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
import tempfile
import time

from aiohttp import web
from redis.asyncio import Redis

from nexus.core.config import load_settings
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.state import read_health, seed_desired
from nexus.tools.fake_backend import FakeBackend, FakeBackendOptions
from nexus.worker.jobs import run_health
from nexus.worker.probe import new_session


async def slow_backend(delay_s: float) -> tuple[web.AppRunner, str]:
    async def models(_request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.json_response({"object": "list", "data": [{"id": "slow-model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def main(args: argparse.Namespace) -> dict:
    fakes = [
        FakeBackend(FakeBackendOptions(name=f"fast{i}", models=(f"m{i % 7}",)))
        for i in range(args.backends - args.slow)
    ]
    for fake in fakes:
        await fake.start()
    slow = [await slow_backend(args.slow_ms / 1000) for _ in range(args.slow)]
    backends = [{"name": f"fast{i}", "url": f.url, "type": "vllm"} for i, f in enumerate(fakes)]
    backends += [{"name": f"slow{i}", "url": url, "type": "vllm"} for i, (_, url) in enumerate(slow)]
    settings = load_settings(
        overrides={"backends": backends, "health_check": {"timeout_seconds": args.timeout, "failure_threshold": 1}},
        environ={},
    )
    with tempfile.TemporaryDirectory() as data:
        server = EmbeddedRedis(data).start()
        redis = Redis.from_url(server.url)
        try:
            await seed_desired(redis, settings.desired())
            async with new_session() as session:
                timings = []
                for _ in range(args.ticks):
                    t0 = time.perf_counter()
                    summary = await run_health(redis, session, settings)
                    timings.append(time.perf_counter() - t0)
            states = {}
            for rec in (await read_health(redis)).values():
                states[rec.state.value] = states.get(rec.state.value, 0) + 1
        finally:
            await redis.aclose()
            server.stop()
    for fake in fakes:
        await fake.stop()
    for runner, _ in slow:
        await runner.cleanup()
    return {
        "python": platform.python_version(),
        "backends": args.backends,
        "slow": args.slow,
        "timeout_s": args.timeout,
        "slow_backend_answers_after_s": args.slow_ms / 1000,
        "tick_wall_s": [round(t, 3) for t in timings],
        "serial_worst_case_s": args.slow * args.timeout,
        "states": states,
        "written": summary["written"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=int, default=100)
    parser.add_argument("--slow", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--slow-ms", type=float, default=5000)
    parser.add_argument("--ticks", type=int, default=3, help="ticks to run (the first also opens connections)")
    parser.add_argument("--json", help="also write the result to this file")
    ns = parser.parse_args()
    if not 0 <= ns.slow <= ns.backends:
        sys.exit("--slow must be between 0 and --backends")
    logging.getLogger("nexus.worker").setLevel(logging.ERROR)  # the slow backends' transitions are expected
    result = asyncio.run(main(ns))
    for i, wall in enumerate(result["tick_wall_s"], 1):
        print(f"tick {i}: {wall:.3f} s over {ns.backends} backends, {ns.slow} slower than the {ns.timeout:g} s timeout")
    print(f"(probing the slow ones one after another would take {result['serial_worst_case_s']:g} s)")
    print(f"states: {result['states']}")
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
