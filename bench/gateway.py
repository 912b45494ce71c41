"""Gateway overhead, side by side: a zero-latency fake backend called directly and through Nexus.

One run measures, on this machine, with wrk (`-t1 -c C -d S --latency`, a Lua POST script):

1. JSON and streaming chat completions at each concurrency, straight to `nexus fake-backend` and through
   `nexus serve` (the gateway, with an external embedded Redis and the backend's max_concurrency at
   10,000 so the scheduler never queues): requests/s and p50/p90/p99, and the added latency (gateway
   minus direct, per percentile) as the headline;
2. the gateway process's CPU time per request (utime + stime from /proc/<pid>/stat over a cell, divided
   by the requests wrk completed, plus what the cell left behind: `nexus serve` runs the worker, whose
   worker ticks the harness waits out after each cell), its idle CPU and its peak RSS (VmHWM);
3. pipeline decision time for 10/100/1,000 backends (`bench/pipeline.py`'s `measure`, in this process);
4. a 3-replica cluster (`nexus.tools.devcluster.LocalCluster`: Redis, 3 `nexus router`, admin API,
   nginx, the same fake): JSON throughput and latency through nginx, and how long an admin change
   (PUT /admin/v1/routing) takes to show on every replica's /ready `snapshot_version`: p50/p99 over N.

Processes are pinned (when the machine allows it): the gateway, or the routers and nginx, on the first
CPU; the fake backend, wrk, Redis, the admin API and this script on the others, for the direct and the
gateway runs alike, so the backend and the load generator get the same CPU either way.

Writes bench/results/gateway-<UTC timestamp>.json, bench/results/latest.json and latest.png (matplotlib,
the `bench` extra), and prints a summary table. Goals (docs/architecture.md#performance-goals) are checked
in the output, never in tests. Every process it starts, it stops, also on Ctrl-C.

    python bench/gateway.py [--quick] [--duration S] [--concurrency 1,8,32,128] [--out bench/results]
                            [--no-cluster] [--no-pin] [--changes 100] [--poll-ms 2] [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/gateway.py` puts bench/ on the path, not the repo root
    sys.path.insert(0, str(ROOT))

import tomli_w  # noqa: E402

from bench.lib import procs, report  # noqa: E402
from bench.lib import wrk as wrklib  # noqa: E402
from nexus.core.embedded_redis import EmbeddedRedis  # noqa: E402
from nexus.tools.devcluster import free_port  # noqa: E402

MODEL = "m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
BODIES = {"json": CHAT, "stream": {**CHAT, "stream": True}}
NEXUS = [sys.executable, "-m", "nexus.cli"]
FAKE_CONCURRENCY = 10_000  # the backend's max_concurrency: far above any wrk -c, so nothing queues
CLUSTER_REPLICAS = 3
SCHEMA = 1


# -- small helpers ---------------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so every `finally` (process cleanup) runs."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Interrupted("SIGTERM")


def _clean_env() -> dict[str, str]:
    """The children's environment: no NEXUS_* overrides from the caller's shell (results must not depend
    on them), unbuffered output for the logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _post(url: str, body: dict, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _preflight(label: str, url: str, *, via_nexus: bool) -> None:
    """wrk does not read bodies: check one JSON and one streamed answer by hand before measuring."""
    status, headers, body = _post(url, BODIES["json"])
    if status != 200 or not json.loads(body).get("choices"):
        raise RuntimeError(f"{label}: JSON chat answered {status}: {body[:300]!r}")
    if via_nexus and headers.get("x-nexus-backend") != "fake":
        raise RuntimeError(f"{label}: expected X-Nexus-Backend: fake, got headers {headers}")
    status, headers, body = _post(url, BODIES["stream"])
    if status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"{label}: streamed chat answered {status}: {body[-300:]!r}")
    if "text/event-stream" not in headers.get("content-type", ""):
        raise RuntimeError(f"{label}: streamed chat is not text/event-stream: {headers}")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tool_version(args: list[str]) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else None


def _machine(wrk: str) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    commit = _tool_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _tool_version(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    from nexus.core.embedded_redis import default_executable

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    return {
        "cores": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_mb": round(mem_kb / 1024) if mem_kb else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "git_commit": commit,
        "git_dirty": bool(dirty),
        "loadavg_before": list(os.getloadavg()),
        "versions": {
            "nexus-gateway": _version("nexus-gateway"),
            "uvicorn": _version("uvicorn"),
            "uvloop": _version("uvloop"),
            "httptools": _version("httptools"),
            "aiohttp": _version("aiohttp"),
            "orjson": _version("orjson"),
            "redis-py": _version("redis"),
            "pydantic": _version("pydantic"),
            "fastapi": _version("fastapi"),
            "matplotlib": _version("matplotlib"),
            "redis-server": _tool_version([default_executable(), "--version"]),
            "wrk": wrklib.version(wrk),
            "nginx": _tool_version([nginx, "-v"]) if nginx else None,
        },
    }


# -- the measurements ------------------------------------------------------------------------------------


def run_pipeline(iterations: int, rounds: int, pinning: procs.Pinning) -> dict[str, Any]:
    """`bench/pipeline.py`'s measure() for 10/100/1,000 backends, in this process, on the gateway's CPU.
    Best of `rounds` by p99: other processes can only add to a decision's time (a preemption lands
    inside some decision), so the quietest round is the closest to what the code costs."""
    from bench.pipeline import measure

    before = os.sched_getaffinity(0) if pinning.enabled else None
    try:
        if pinning.enabled and pinning.gateway:
            os.sched_setaffinity(0, pinning.gateway)
        rows = []
        cores_before, own_before = procs.cpu_jiffies(), procs.own_cpu_seconds()
        for n in (10, 100, 1000):
            runs = [measure(n, iterations if n < 1000 else max(200, iterations // 10)) for _ in range(rounds)]
            best = min(runs, key=lambda r: r["p99_us"])
            rows.append({**best, "rounds": rounds, "p99_us_by_round": [r["p99_us"] for r in runs]})
            print(
                f"  pipeline {n:>5} backends: p50 {best['p50_us']:.1f} us  p99 {best['p99_us']:.1f} us"
                f"  (best of {rounds})",
                flush=True,
            )
        other = None
        if pinning.enabled and pinning.gateway:
            busy, total = procs.busy_seconds(cores_before, procs.cpu_jiffies(), pinning.gateway)
            own = procs.own_cpu_seconds() - own_before
            other = round(max(0.0, busy - own) / total * 100, 1) if total else None
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    return {
        "rows": rows,
        "cpu": "the gateway's CPU (pinned)" if pinning.enabled else "unpinned",
        "other_load_pct": other,  # share of that CPU used by processes not started here: tail noise
    }


def measure_cell(
    children: procs.Children,
    wrk: str,
    url: str,
    script: Path,
    *,
    concurrency: int,
    duration: float,
    watch: dict[str, tuple[str, list[int]]],
) -> dict[str, Any]:
    """One wrk run, plus the CPU time of the watched processes (label -> (side, pids), summed) over it and,
    when pinned, how much of each side's CPUs went to processes that are not ours (other users' load)."""
    pinning = children.pinning
    before = {label: sum(procs.cpu_seconds(p) for p in pids) for label, (_, pids) in watch.items()}
    own_before = procs.own_cpu_seconds()  # this script + waited-for children (wrk)
    cores_before = procs.cpu_jiffies()
    result = wrklib.run(children, wrk, url, script, connections=concurrency, duration_s=duration)
    cores_after = procs.cpu_jiffies()
    own = procs.own_cpu_seconds() - own_before
    after = {label: sum(procs.cpu_seconds(p) for p in pids) for label, (_, pids) in watch.items()}
    result["cpu"] = {}
    for label in watch:
        used = after[label] - before[label]
        result["cpu"][label] = {
            "cpu_s": round(used, 3),
            "us_per_request": round(used / result["requests"] * 1e6, 1) if result["requests"] else None,
            "cores_busy": round(used / result["duration_s"], 3) if result["duration_s"] else None,
        }
    result["cpu"]["wrk_and_harness"] = {"cpu_s": round(own, 3)}
    if pinning.enabled and cores_before and cores_after:
        noise = {}
        for side in ("gateway", "load"):
            cpus = pinning.cpus(side) or frozenset()
            busy, total = procs.busy_seconds(cores_before, cores_after, cpus)
            ours = sum(after[lb] - before[lb] for lb, (sd, _) in watch.items() if sd == side)
            ours += own if side == "load" else 0.0
            noise[f"{side}_cpus_other_pct"] = round(max(0.0, busy - ours) / total * 100, 1) if total else None
        result["noise"] = noise
    return result


def settle(pids: list[int], idle_cores: float, timeout: float = 30.0, window: float = 0.25) -> dict[str, Any]:
    """Wait until the processes are back to idle after a cell, so cells stay independent: work a cell leaves
    behind (the in-process worker's ticks of `nexus serve`, the last telemetry flushes) would otherwise be
    billed to a later cell. Done when a `window` passed at idle CPU use. Returns the CPU used meanwhile above
    the idle baseline: work the cell left behind."""
    threshold = max(0.08, 3 * idle_cores)  # cores; /proc counts 10 ms ticks
    t0 = time.monotonic()
    start = prev = sum(procs.cpu_seconds(p) for p in pids)
    settled = False
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        now = sum(procs.cpu_seconds(p) for p in pids)
        quiet = (now - prev) / window < threshold
        prev = now
        if quiet:
            settled = True
            break
    elapsed = time.monotonic() - t0
    used = sum(procs.cpu_seconds(p) for p in pids) - start
    return {
        "seconds": round(elapsed, 2),
        "cpu_s": round(max(0.0, used - idle_cores * elapsed), 3),
        "settled": settled,
    }


def _added(direct: dict, through: dict) -> dict[str, float]:
    return {q: round(through[f"{q}_ms"] - direct[f"{q}_ms"], 3) for q in ("p50", "p90", "p99")}


def run_single(
    args: argparse.Namespace,
    children: procs.Children,
    wrk: str,
    scripts: dict[str, Path],
    tmp: Path,
) -> dict[str, Any]:
    """Fake backend + external Redis + one `nexus serve`; every cell direct, then through the gateway."""
    pinning = children.pinning
    env = _clean_env()
    redis = EmbeddedRedis(tmp / "redis")
    try:
        redis.start()
        pinning.pin_tree("redis", redis.pid, "load")
        fake_port = free_port()
        fake_log = tmp / "fake.log"
        fake = children.spawn(
            "fake-backend",
            [
                *NEXUS,
                "fake-backend",
                "--host",
                "127.0.0.1",
                "--port",
                str(fake_port),
                "--model",
                MODEL,
                "--name",
                "fake",
            ],
            side="load",
            log=fake_log,
            env=env,
        )
        fake_url = f"http://127.0.0.1:{fake_port}"
        procs.wait_http(fake_url + "/_fake/requests", proc=fake, log=fake_log)

        gw_port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": gw_port},
            "redis": {"url": redis.url},
            # the in-process worker's quality tick every second (default 30 s), so the work each cell
            # leaves is done right after it, measured by settle(), instead of landing in a later cell
            "quality": {"metrics_interval_seconds": 1},
            "backends": [
                {
                    "name": "fake",
                    "url": fake_url,
                    "type": "vllm",
                    "max_concurrency": FAKE_CONCURRENCY,
                    "models": [MODEL],
                }
            ],
        }
        config_path = tmp / "nexus.toml"
        config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
        gw_log = tmp / "gateway.log"
        gateway = children.spawn(
            "gateway", [*NEXUS, "serve", "--config", str(config_path)], side="gateway", log=gw_log, env=env
        )
        gw_url = f"http://127.0.0.1:{gw_port}"
        procs.wait_http(gw_url + "/ready", proc=gateway, log=gw_log)
        targets = {"direct": fake_url + "/v1/chat/completions", "gateway": gw_url + "/v1/chat/completions"}
        _preflight("direct", targets["direct"], via_nexus=False)
        _preflight("gateway", targets["gateway"], via_nexus=True)
        rss_start = procs.memory_kb(gateway.pid)
        idle_s = 1.0 if args.quick else 2.0  # background loops (telemetry flush, snapshot poll, worker)
        idle_cpu = procs.cpu_seconds(gateway.pid)
        time.sleep(idle_s)
        idle_cpu = procs.cpu_seconds(gateway.pid) - idle_cpu

        for url in targets.values() if args.warmup > 0 else ():  # warm up connections, caches, first paths
            for kind in BODIES:
                wrklib.run(children, wrk, url, scripts[kind], connections=8, duration_s=args.warmup)
        settle([gateway.pid], idle_cpu / idle_s)  # the warm-up's leftovers done before the first cell
        watch = {"gateway": ("gateway", [gateway.pid]), "fake": ("load", [fake.pid]), "redis": ("load", [redis.pid])}
        cells = []
        for kind in BODIES:
            for c in args.concurrency:
                cell: dict[str, Any] = {"kind": kind, "concurrency": c}
                for target, url in targets.items():  # interleaved: slow drift of the machine hits both
                    run = measure_cell(
                        children, wrk, url, scripts[kind], concurrency=c, duration=args.duration, watch=watch
                    )
                    if target == "gateway":
                        run["gateway_rss_kb"] = procs.memory_kb(gateway.pid).get("VmRSS")
                        bg = settle([gateway.pid], idle_cpu / idle_s)
                        run["background_after"] = bg  # e.g. the in-process worker's ticks
                        gw_cpu = run["cpu"]["gateway"]
                        gw_cpu["us_per_request_with_background"] = (
                            round((gw_cpu["cpu_s"] + bg["cpu_s"]) / run["requests"] * 1e6, 1)
                            if run["requests"]
                            else None
                        )
                    else:
                        run["cpu"].pop("gateway")  # idle during the direct run: not a cost of it
                    cell[target] = run
                cell["added_ms"] = _added(cell["direct"], cell["gateway"])
                d, g = cell["direct"]["rps"], cell["gateway"]["rps"]
                cell["rps_ratio"] = round(g / d, 3) if d else None
                cells.append(cell)
                print("  " + report.cell_line(cell), flush=True)
        mem = procs.memory_kb(gateway.pid)
        if gateway.poll() is not None:
            raise RuntimeError(f"the gateway exited during the run ({gateway.returncode}); see {gw_log}")
        return {
            "fake_url": fake_url,
            "gateway_url": gw_url,
            "redis": "external embedded redis-server (nexus.core.embedded_redis), not inside the gateway",
            "gateway_config": config,
            "gateway_command": ["nexus", "serve", "--config", "<generated nexus.toml>"],
            "cells": cells,
            "gateway_idle": {"seconds": idle_s, "cpu_s": round(idle_cpu, 3), "cores_busy": round(idle_cpu / idle_s, 3)},
            "gateway_memory": {
                "rss_after_start_mb": round(rss_start.get("VmRSS", 0) / 1024, 1),
                "rss_end_mb": round(mem.get("VmRSS", 0) / 1024, 1),
                "peak_rss_mb": round(mem.get("VmHWM", 0) / 1024, 1),
            },
        }
    finally:
        children.stop_all()
        redis.stop()


async def _propagation(
    admin_url: str, headers: dict[str, str], replicas: list[str], changes: int, poll_s: float
) -> dict[str, Any]:
    import aiohttp

    put_to_all, ack_to_all, put_rtt, per_replica = [], [], [], []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def version_of(url: str) -> int:
            async with http.get(url + "/ready") as resp:
                return int((await resp.json())["snapshot_version"] or 0)

        async def seen_at(url: str, version: int, deadline: float) -> float:
            while True:
                if await version_of(url) >= version:
                    return time.perf_counter()
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{url} did not reach snapshot version {version} within 10 s")
                await asyncio.sleep(poll_s)

        for url in replicas:  # connections open before the first sample
            await version_of(url)
        for i in range(changes):
            t_send = time.perf_counter()
            async with http.put(
                admin_url + "/admin/v1/routing", json={"max_retries": 1 + i % 2}, headers=headers
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RuntimeError(f"PUT /admin/v1/routing answered {resp.status}: {body}")
            t_ack = time.perf_counter()
            seen = await asyncio.gather(*(seen_at(u, int(body["version"]), t_ack + 10) for u in replicas))
            last = max(seen)
            put_to_all.append((last - t_send) * 1000)
            ack_to_all.append(max(0.0, last - t_ack) * 1000)
            put_rtt.append((t_ack - t_send) * 1000)
            per_replica.extend((s - t_send) * 1000 for s in seen)
            await asyncio.sleep(0.01)

    def stats(values: list[float]) -> dict[str, float]:
        s = sorted(values)
        return {
            "p50_ms": round(statistics.median(s), 2),
            "p90_ms": round(_percentile(s, 90), 2),
            "p99_ms": round(_percentile(s, 99), 2),
            "max_ms": round(s[-1], 2),
            "mean_ms": round(statistics.fmean(s), 2),
        }

    return {
        "changes": changes,
        "replicas": len(replicas),
        "poll_ms": poll_s * 1000,
        "change": "PUT /admin/v1/routing {max_retries: 1|2}, alternating; then poll every replica's /ready",
        "put_to_all_replicas": stats(put_to_all),  # headline: from sending the PUT to the last replica
        "ack_to_all_replicas": stats(ack_to_all),  # from the PUT's 200 to the last replica
        "put_round_trip": stats(put_rtt),
        "per_replica": stats(per_replica),
    }


def run_cluster(
    args: argparse.Namespace,
    pinning: procs.Pinning,
    children: procs.Children,
    wrk: str,
    scripts: dict[str, Path],
    tmp: Path,
    direct: dict[tuple[str, int], dict],
) -> dict[str, Any]:
    from nexus.tools.devcluster import FakeSpec, LocalCluster

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if nginx and not shutil.which("nginx"):  # LocalCluster runs `nginx` from PATH
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + str(Path(nginx).parent)
    cluster = LocalCluster(
        tmp / "cluster",
        routers=CLUSTER_REPLICAS,
        workers=0,
        nginx=nginx is not None,
        fakes=[FakeSpec("fake", (MODEL,), backend={"max_concurrency": FAKE_CONCURRENCY})],
    )
    out: dict[str, Any] = {"replicas": CLUSTER_REPLICAS, "workers": 0, "nginx": nginx is not None, "cells": []}
    try:
        cluster.start()
        for p in cluster.routers:
            pinning.pin_tree(p.name, p.popen.pid if p.popen else None, "gateway")
        if cluster.nginx is not None:
            pinning.pin_tree("nginx", cluster.nginx.popen.pid if cluster.nginx.popen else None, "gateway")
        for p in [*cluster.fakes, *([cluster.admin] if cluster.admin else [])]:
            pinning.pin_tree(p.name, p.popen.pid if p.popen else None, "load")
        pinning.pin_tree("cluster-redis", cluster.redis.pid, "load")

        if cluster.nginx is None:
            out["note"] = "nginx is not installed: no throughput through a load balancer (apt-get install nginx)"
        else:
            url = cluster.nginx.url + "/v1/chat/completions"
            _preflight("cluster", url, via_nexus=True)
            if args.warmup > 0:
                wrklib.run(children, wrk, url, scripts["json"], connections=8, duration_s=args.warmup)
            router_pids = [p.popen.pid for p in cluster.routers if p.popen]
            nginx_pids = [cluster.nginx.popen.pid, *procs.descendants(cluster.nginx.popen.pid)]
            load_pids = [p.popen.pid for p in [*cluster.fakes, cluster.admin] if p is not None and p.popen]
            watch = {
                "routers": ("gateway", router_pids),
                "nginx": ("gateway", nginx_pids),
                "fake_admin_redis": ("load", [*load_pids, cluster.redis.pid]),
            }
            for c in args.concurrency:
                run = measure_cell(
                    children, wrk, url, scripts["json"], concurrency=c, duration=args.duration, watch=watch
                )
                cell: dict[str, Any] = {"kind": "json", "concurrency": c, "cluster": run}
                if ("json", c) in direct:
                    cell["added_vs_direct_ms"] = _added(direct[("json", c)], run)
                out["cells"].append(cell)
                print("  " + report.cluster_line(cell), flush=True)
            out["router_peak_rss_mb"] = [round(procs.memory_kb(pid).get("VmHWM", 0) / 1024, 1) for pid in router_pids]
        if cluster.admin is not None and args.changes > 0:
            print(
                f"  propagation: {args.changes} admin changes, polling {CLUSTER_REPLICAS} replicas every "
                f"{args.poll_ms:g} ms ...",
                flush=True,
            )
            out["propagation"] = asyncio.run(
                _propagation(
                    cluster.admin.url,
                    cluster.admin_headers,
                    [p.url for p in cluster.routers],
                    args.changes,
                    args.poll_ms / 1000,
                )
            )
    finally:
        cluster.stop()
    return out


# -- goals -----------------------------------------------------------------------------------------------


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """docs/architecture.md#performance-goals, checked against this run (reported, never asserted).
    `noise_pct`: share of the measured CPU that other processes used meanwhile; tails (p99) are unreliable
    when it is high."""
    out = []

    def add(name: str, value: float | None, target: str, met: bool | None, noise: float | None = None) -> None:
        out.append({"goal": name, "value": value, "target": target, "met": met, "noise_pct": noise})

    def gw_noise(run: dict) -> float | None:
        return (run.get("noise") or {}).get("gateway_cpus_other_pct")

    pipeline = result.get("pipeline", {})
    rows = {r["backends"]: r for r in pipeline.get("rows", [])}
    noise = pipeline.get("other_load_pct")
    if 10 in rows:
        add("pipeline p99, 10 backends (us)", rows[10]["p99_us"], "< 50", rows[10]["p99_us"] < 50, noise)
    if 1000 in rows:
        v = rows[1000]["p99_us"]
        add("pipeline p99, 1,000 backends (us)", v, "< 1000", v < 1000, noise)
    cells = result.get("single", {}).get("cells", [])
    c1 = next((c for c in cells if c["kind"] == "json" and c["concurrency"] == 1), None)
    if c1:
        v = c1["added_ms"]["p50"]
        add("gateway added p50, JSON, 1 client (ms)", v, "< 1", v < 1, gw_noise(c1["gateway"]))
    json_cells = [c for c in cells if c["kind"] == "json"]
    if json_cells:
        best = max(json_cells, key=lambda c: c["gateway"]["rps"])
        v = best["gateway"]["rps"]
        add(
            "gateway JSON requests/s, one process (best concurrency)",
            v,
            ">= 1000 (thousands)",
            v >= 1000,
            gw_noise(best["gateway"]),
        )
    prop = result.get("cluster", {}).get("propagation")
    if prop:
        v = prop["put_to_all_replicas"]["p99_ms"]
        add("admin change visible on every replica, p99 (ms)", v, "< 1000", v < 1000)
    return out


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s per cell, concurrency 1,32, 20 changes")
    p.add_argument("--duration", type=int, help="whole seconds per wrk cell (default 5; 1 with --quick)")
    p.add_argument("--concurrency", help="comma-separated wrk connection counts (default 1,8,32,128; 1,32 quick)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results directory")
    p.add_argument("--no-cluster", action="store_true", help="skip the 3-replica cluster and propagation")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--changes", type=int, help="admin changes for propagation (default 100; 20 with --quick)")
    p.add_argument("--poll-ms", type=float, default=2.0, help="poll interval of each replica's /ready")
    p.add_argument("--warmup", type=float, help="seconds of wrk warm-up per target and body (default 1; 0: none)")
    p.add_argument("--pipeline-iterations", type=int, help="decisions per size (default 20000; 2000 quick)")
    p.add_argument("--keep-logs", action="store_true", help="keep the work directory (process logs)")
    args = p.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (1 if args.quick else 5)
    if args.duration < 1:
        p.error("--duration is whole seconds, at least 1 (wrk -d)")
    args.concurrency = [
        int(c) for c in (args.concurrency or ("1,32" if args.quick else "1,8,32,128")).split(",") if c.strip()
    ]
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency needs positive integers, e.g. 1,8,32,128")
    args.changes = args.changes if args.changes is not None else (20 if args.quick else 100)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.pipeline_iterations = args.pipeline_iterations or (2000 if args.quick else 20000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = wrklib.find_wrk()
    if wrk is None:
        print("bench/gateway.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`&`)
    started = dt.datetime.now(dt.UTC)
    pinning = procs.plan_pinning(not args.no_pin)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "benchmark": "gateway",
        "started_at": started.isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv]),
        "machine": _machine(wrk),
        "settings": {
            "quick": args.quick,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "warmup_s": args.warmup,
            "wrk": "wrk -t1 -c C -d S --timeout=10s --latency -s <POST script>",
            "bodies": BODIES,
            "fake_backend": "nexus fake-backend, latency_ms=0, stream_chunks=5 (default)",
            "backend_max_concurrency": FAKE_CONCURRENCY,
            "added_latency": "gateway percentile minus direct percentile, same cell (not a percentile of differences)",
            "cpu_per_request": "utime+stime delta of the process over the cell / requests wrk completed",
        },
    }
    print(f"Nexus gateway benchmark: {args.duration:g} s per cell, concurrency {args.concurrency}")
    print(f"pinning: {pinning.note}")
    keep = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    children = procs.Children(pinning)
    failed = False
    try:
        scripts = {
            kind: wrklib.write_post_script(keep / f"post-{kind}.lua", json.dumps(body).encode())
            for kind, body in BODIES.items()
        }
        print("pipeline decision time (bench/pipeline.py measure):", flush=True)
        result["pipeline"] = run_pipeline(args.pipeline_iterations, 1 if args.quick else 3, pinning)
        if pinning.enabled and pinning.load:
            os.sched_setaffinity(0, pinning.load)  # this script (preflight, propagation polling): load side
            pinning.record("bench/gateway.py", os.getpid())
        print("direct vs gateway:", flush=True)
        result["single"] = run_single(args, children, wrk, scripts, keep / "single")
        if args.no_cluster:
            result["cluster"] = {"skipped": "--no-cluster"}
        else:
            print(f"{CLUSTER_REPLICAS}-replica cluster (LocalCluster, nginx in front):", flush=True)
            direct = {(c["kind"], c["concurrency"]): c["direct"] for c in result["single"]["cells"]}
            result["cluster"] = run_cluster(args, pinning, children, wrk, scripts, keep / "cluster", direct)
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}): every process this benchmark started is stopped", file=sys.stderr)
        return 130
    except Exception:
        failed = True
        raise
    finally:
        children.stop_all()
        if args.keep_logs or failed:
            print(f"work directory (process logs) kept: {keep}", file=sys.stderr)
        else:
            shutil.rmtree(keep, ignore_errors=True)
    result["pinning"] = pinning.as_dict()
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    result["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["goals"] = goals(result)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chart = out / "latest.png"
    result["chart"] = report.chart(result, chart)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(result, indent=2) + "\n"
    (out / f"gateway-{stamp}.json").write_text(text, encoding="utf-8")
    (out / "latest.json").write_text(text, encoding="utf-8")
    print()
    print(report.summary(result))
    print(
        f"\nwrote {out / f'gateway-{stamp}.json'}, {out / 'latest.json'}"
        + (f", {chart}" if result["chart"].get("path") else f" (no chart: {result['chart'].get('note')})")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
