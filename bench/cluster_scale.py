"""What one Redis primary carries: N router replicas at a fixed request rate each against one Redis, and the
Redis commands and Redis CPU they cost.

The replicas are full `RouterNode`s (their own node id, snapshot refresher, heartbeat, telemetry buffer and
flush, budget leases), N of them in this process, each behind its own `GatewayApp` driven straight through ASGI
(bench/lib/interleave.py `asgi_post`), in front of one zero-latency fake backend. Every replica gets `--rate`
requests per second (a steady schedule, not a closed loop), so N = 64 is 64 replicas' worth of Redis traffic
on one machine. Per N, two phases of `--seconds` each on a fresh Redis:

- idle: the replicas run, no requests: what a replica costs Redis by being there (heartbeats, snapshot polls);
- loaded: every replica at `--rate` req/s.

Printed per N: Redis commands/s, commands per 100 requests (loaded minus idle), Redis CPU (`INFO cpu`, user +
sys of the server process) per replica-second idle and per 1,000 requests, and the replicas one primary
carries at 80 % of a core at 5,000 req/s each, from cost = idle + per-request x 5,000. The per-request cost is
measured at `--rate` per replica: a busier replica carries more requests per flush (one batch per
`telemetry.flush_interval_ms`), so its cost per request is lower and the figure is a floor. No workers run:
their ticks cost Redis per tick, not per request (docs/capacity.md).

    python bench/cluster_scale.py [--replicas 1,4,16,64] [--rate 20] [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from bench.lib import interleave, procs  # noqa: E402
from nexus.core.config import load_settings  # noqa: E402
from nexus.core.embedded_redis import EmbeddedRedis  # noqa: E402
from nexus.router_node.app import GatewayApp  # noqa: E402
from nexus.router_node.node import RouterNode  # noqa: E402
from nexus.tools.devcluster import free_port  # noqa: E402

NEXUS = [sys.executable, "-m", "nexus.cli"]
PATH = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}).encode()
HEADERS = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
TARGET_RPS = 5_000  # per replica, for the capacity figure
CORE_SHARE = 0.8


async def _redis_counters(redis: Redis) -> tuple[int, float]:
    """(commands processed so far, CPU seconds of the Redis server so far)."""
    stats = await redis.info("stats")
    cpu = await redis.info("cpu")
    return int(stats["total_commands_processed"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _drive(apps: list[GatewayApp], rate: float, seconds: float) -> tuple[int, int]:
    """Every app gets `rate` requests per second for `seconds`, on a steady schedule; (served, failed)."""
    served = failed = 0
    interval = 1.0 / (rate * len(apps))
    pending: set[asyncio.Task] = set()

    async def one(app: GatewayApp) -> None:
        nonlocal served, failed
        try:
            await interleave.asgi_post(app, PATH, BODY, HEADERS)
            served += 1
        except Exception:  # counted and reported: a failing run is not a measurement
            failed += 1

    start = time.monotonic()
    i = 0
    while (now := time.monotonic()) < start + seconds:
        due = start + i * interval
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(apps[i % len(apps)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
    if pending:
        await asyncio.wait(pending)
    return served, failed


async def _phase(redis: Redis, apps: list[GatewayApp], rate: float, seconds: float) -> dict[str, float]:
    c0, cpu0 = await _redis_counters(redis)
    t0 = time.monotonic()
    if rate > 0:
        served, failed = await _drive(apps, rate, seconds)
    else:
        await asyncio.sleep(seconds)
        served = failed = 0
    took = time.monotonic() - t0
    c1, cpu1 = await _redis_counters(redis)
    return {"seconds": took, "commands": c1 - c0 - 2, "cpu_s": cpu1 - cpu0, "served": served, "failed": failed,
            "scheduled_rps": rate * len(apps)}


async def _cell(n: int, args: argparse.Namespace, tmp: Path, fake_url: str) -> dict[str, Any]:
    server = EmbeddedRedis(tmp / f"redis-{n}")
    server.start()
    probe = Redis.from_url(server.url)
    config = {"redis": {"url": server.url},
              "backends": [{"name": "fake", "url": fake_url, "type": "vllm", "max_concurrency": 100_000,
                            "models": ["m"]}]}
    settings = load_settings(overrides=config, environ={})
    nodes: list[RouterNode] = []
    clients: list[Redis] = []
    try:
        for i in range(n):
            client = Redis.from_url(server.url)
            clients.append(client)
            nodes.append(RouterNode(settings, client, node_id=f"scale-{n}-{i}"))
        await asyncio.gather(*(node.start() for node in nodes))
        deadline = time.monotonic() + 30
        while not all(node.ready for node in nodes):
            if time.monotonic() > deadline:
                raise SystemExit(f"N={n}: replicas did not become ready")
            await asyncio.sleep(0.05)
        apps = [GatewayApp(node, drain_seconds=0.5) for node in nodes]
        await _drive(apps, args.rate, min(2.0, args.seconds))  # warm-up: connections, leases, first flushes
        idle = await _phase(probe, apps, 0, args.seconds)
        low = await _phase(probe, apps, args.rate, args.seconds)
        high = await _phase(probe, apps, max(args.rate * 2, args.total_rps / n), args.seconds)
    finally:
        await asyncio.gather(*(node.stop(0.5) for node in nodes), return_exceptions=True)
        for client in clients:
            await client.aclose()
        await probe.aclose()
        server.stop()
    return _figures(n, idle, low, high)


def _per_second(phase: dict[str, float], n: int) -> tuple[float, float, float]:
    """(requests, commands, Redis CPU seconds) per replica-second of a phase."""
    scale = phase["seconds"] * n
    return phase["served"] / scale, phase["commands"] / scale, phase["cpu_s"] / scale


def _figures(n: int, idle: dict[str, float], low: dict[str, float], high: dict[str, float]) -> dict[str, Any]:
    """A replica's Redis cost as a line in its request rate, through the two loaded phases: a fixed part (its
    polls and heartbeats, and one telemetry batch per flush interval however many requests it carries) and a
    part per request; extrapolated to TARGET_RPS per replica."""
    idle_cmd = _per_second(idle, n)[1]
    r1, cmd1, cpu1 = _per_second(low, n)
    r2, cmd2, cpu2 = _per_second(high, n)
    slope_cmd = max(0.0, (cmd2 - cmd1) / (r2 - r1)) if r2 > r1 else 0.0
    slope_cpu = max(0.0, (cpu2 - cpu1) / (r2 - r1)) if r2 > r1 else 0.0
    fixed_cmd, fixed_cpu = cmd2 - slope_cmd * r2, cpu2 - slope_cpu * r2
    at_target_cmd = fixed_cmd + slope_cmd * TARGET_RPS
    at_target_cpu = fixed_cpu + slope_cpu * TARGET_RPS
    failed = low["failed"] + high["failed"]
    # this process drives every replica: past what it can serve, flushes stretch and the line means nothing
    saturated = any(ph["served"] / ph["seconds"] < 0.9 * ph["scheduled_rps"] for ph in (low, high))
    out = {
        "replicas": n, "failed": failed, "saturated": saturated,
        "phases": {"idle": idle, "low": low, "high": high},
        "rps_per_replica": [round(r1, 1), round(r2, 1)],
        "redis_commands_per_s": [round(cmd1 * n), round(cmd2 * n)],
        "commands_per_100_requests": [round(cmd1 / r1 * 100, 1), round(cmd2 / r2 * 100, 1)],
        "idle_commands_per_replica_s": round(idle_cmd, 1),
        "redis_cpu_us_per_1000_requests": [round(cpu1 / r1 * 1e9), round(cpu2 / r2 * 1e9)],
        "fixed_commands_per_replica_s": round(fixed_cmd, 1), "commands_per_request": round(slope_cmd, 4),
        "fixed_redis_cpu_us_per_replica_s": round(fixed_cpu * 1e6, 1),
        "redis_cpu_us_per_request": round(slope_cpu * 1e6, 3),
        "at_5000_rps": None if saturated else {
            "commands_per_100_requests": round(at_target_cmd / TARGET_RPS * 100, 2),
            "redis_cpu_us_per_replica_s": round(at_target_cpu * 1e6),
            "replicas_per_primary": int(CORE_SHARE / at_target_cpu) if at_target_cpu > 0 else None},
    }
    t = out["at_5000_rps"] or {"commands_per_100_requests": "-", "replicas_per_primary": "-"}
    print(f"N={n:<3} at {r1:.0f} and {r2:.0f} req/s per replica: Redis {out['redis_commands_per_s'][0]} and "
          f"{out['redis_commands_per_s'][1]} commands/s, {out['commands_per_100_requests'][0]} and "
          f"{out['commands_per_100_requests'][1]} per 100 requests, Redis CPU "
          f"{out['redis_cpu_us_per_1000_requests'][0]} and {out['redis_cpu_us_per_1000_requests'][1]} us per 1,000 "
          f"requests (idle replica: {idle_cmd:.0f} "
          f"commands/s); per replica {fixed_cmd:.0f} commands/s + {slope_cmd:.4f} per request -> at {TARGET_RPS} "
          f"req/s: {t['commands_per_100_requests']} per 100 requests, {t['replicas_per_primary']} replicas on "
          f"80 % of a core{'  FAILED ' + str(failed) if failed else ''}"
          f"{'  SATURATED (this process could not drive the schedule; no extrapolation)' if saturated else ''}",
          flush=True)
    return out


async def _run(args: argparse.Namespace, tmp: Path, fake_url: str) -> list[dict[str, Any]]:
    return [await _cell(n, args, tmp, fake_url) for n in args.replicas]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--rate", type=float, default=10.0, help="requests per second per replica, low phase")
    p.add_argument("--total-rps", type=float, default=800.0,
                   help="the high phase's requests per second over all replicas (what this process can drive)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the idle and of the loaded phase")
    p.add_argument("--quick", action="store_true", help="N = 1, 4 for 3 s each")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cluster-scale-latest.json")
    args = p.parse_args()
    if args.quick:
        args.replicas, args.seconds = [1, 4], 3.0
    children = procs.Children(procs.plan_pinning(True))
    with tempfile.TemporaryDirectory(prefix="nexus-bench-scale-") as d:
        tmp = Path(d)
        try:
            port = free_port()
            fake = children.spawn("fake", [*NEXUS, "fake-backend", "--host", "127.0.0.1", "--port", str(port),
                                           "--model", "m", "--name", "fake"], side="load", log=tmp / "fake.log")
            fake_url = f"http://127.0.0.1:{port}"
            procs.wait_http(fake_url + "/_fake/requests", proc=fake, log=tmp / "fake.log")
            cells = asyncio.run(_run(args, tmp, fake_url))
        finally:
            children.stop_all()
    result = {"rate_per_replica": args.rate, "total_rps": args.total_rps, "seconds": args.seconds, "cells": cells,
              "target_rps_per_replica": TARGET_RPS, "core_share": CORE_SHARE}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
