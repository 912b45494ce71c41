"""Tenancy costs and bounds, measured: what a key and its rate limits add to a request, what the limits let
through across replicas, and how fast a revocation reaches every replica.

Both latency figures compare an unkeyed gateway with one whose only client key has RPM and TPM limits far above
the load (every request authenticates, takes from its allowances, gets the rate headers and settles; none is
refused), in front of one zero-latency fake backend, each gateway on its own embedded Redis.

0. In process: both gateways in this process and one event loop, requests alternating between them one by one
   straight through ASGI (bench/lib/interleave.py): the added time of the whole request path, free of the
   sockets, the servers and of what differs between two processes. Median over rounds of the p50 difference.
1. Real gateways (`nexus serve`), started afresh every round in alternating order:
   - c=1: one keep-alive connection to each, requests alternating between them one by one, so the VM's drift
     (which moved a sequential wrk c=1 comparison by +-100 us per round) hits both alike;
   - c=32 (and any other C > 1): wrk `-t1 -c C` against each in turn, and the gateway's CPU per request. A
     single-core gateway at c=32 is saturated: every request waits for the ~31 ahead of it, so its p50 is about
     C x the CPU per request, and the added p50 is about C x the added CPU per request (docs/tenancy.md).
2. The acceptance run of RPM at full scale: `LocalCluster` (Redis, 3 routers, 2 workers, admin, the fake), a key
   with `rpm = 60`, 32 clients spread over the 3 replicas for `--rate-seconds` (default 120): the largest number
   of requests the backend received in any sliding 60 s window (bound: 60; see docs/tenancy.md), then the same
   for `tpm`. And 50 revocations: seconds until all 3 replicas answer 401, p50/p99.

    python bench/tenancy.py [--quick] [--duration S] [--rate-seconds S] [--no-cluster] [--no-latency] [--no-inprocess]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import tomli_w  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench.lib import interleave, procs  # noqa: E402
from bench.lib import wrk as wrklib  # noqa: E402
from nexus.core.config import load_settings  # noqa: E402
from nexus.core.embedded_redis import EmbeddedRedis  # noqa: E402
from nexus.router_node.app import GatewayApp  # noqa: E402
from nexus.router_node.node import RouterNode  # noqa: E402
from nexus.tools.devcluster import FakeSpec, LocalCluster, free_port  # noqa: E402

NEXUS = [sys.executable, "-m", "nexus.cli"]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say hello in one short sentence."}], "max_tokens": 16}
KEY = "nx-bench-key-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_ID = "key_00000000be0c"
PATH = "/v1/chat/completions"


def _gateway(children: procs.Children, tmp: Path, name: str, fake_url: str, keyed: bool) -> tuple[str, Any, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(tmp / f"redis-{name}")
    redis.start()
    port = free_port()
    config = _config(redis.url, fake_url, keyed, port)
    path = tmp / f"{name}.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    log = tmp / f"{name}.log"
    gw = children.spawn(name, [*NEXUS, "serve", "--config", str(path)], side="gateway", log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_http(url + "/ready", proc=gw, log=log)
    except BaseException:
        children.stop(gw)
        redis.stop()
        raise
    return url, redis, gw


def _config(redis_url: str, fake_url: str, keyed: bool, port: int = 0) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "redis": {"url": redis_url},
        "backends": [{"name": "fake", "url": fake_url, "type": "vllm", "max_concurrency": 10_000, "models": ["m"]}],
    }
    if keyed:
        digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
        config["keys"] = [{"id": KEY_ID, "name": "bench", "digest": digest, "rpm": 100_000_000, "tpm": 10**11}]
    return config


async def _app(tmp: Path, name: str, fake_url: str) -> tuple[RouterNode, Redis, EmbeddedRedis, GatewayApp, list]:
    server = EmbeddedRedis(tmp / f"redis-inproc-{name}")  # its own: the config seeds an empty store only
    server.start()
    redis = Redis.from_url(server.url)
    node = RouterNode(load_settings(overrides=_config(server.url, fake_url, name == "keyed"), environ={}), redis)
    await node.start()
    deadline = time.monotonic() + 15
    while not node.ready:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: the in-process node did not become ready")
        await asyncio.sleep(0.05)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if name == "keyed":
        headers.append((b"authorization", f"Bearer {KEY}".encode()))
    return node, redis, server, GatewayApp(node, drain_seconds=0.5), headers


async def _inprocess(args: argparse.Namespace, tmp: Path, fake_url: str) -> dict[str, Any]:
    """Both gateways in this process and event loop, requests alternating between them straight through ASGI:
    the added time of the whole request path without sockets, servers or a second process's layout."""
    body = json.dumps(CHAT).encode()
    n = 1_000 if args.quick else 4_000
    added: list[float] = []
    for _ in range(1 if args.quick else 3):
        parts, calls = [], {}
        try:
            for name in ("unkeyed", "keyed"):
                node, redis, server, app, headers = await _app(tmp, name, fake_url)
                parts.append((node, redis, server))
                calls[name] = functools.partial(interleave.asgi_post, app, PATH, body, headers)
            _, keyed_headers, _ = await calls["keyed"]()
            if not any(k == b"x-ratelimit-limit-requests" for k, _ in keyed_headers):
                raise SystemExit("the keyed in-process gateway did not apply its rate limits")
            await interleave.interleaved_async(calls, 300)  # warm-up: allowances granted, code paths warm
            lat = await interleave.interleaved_async(calls, n)
            added.append((statistics.median(lat["keyed"]) - statistics.median(lat["unkeyed"])) / 1000)
        finally:
            for node, redis, server in parts:
                await node.stop(0.5)
                await redis.aclose()
                server.stop()
    out = {"added_us": round(statistics.median(added), 1), "added_us_rounds": [round(a, 1) for a in added],
           "requests_per_round": n}
    print(f"in process (one event loop, ASGI direct, requests alternating): keyed+limited adds "
          f"{out['added_us']:+.1f} us at p50 (rounds: {', '.join(f'{a:+.1f}' for a in added)}; {n} requests each)",
          flush=True)
    return out


def _fake(children: procs.Children, tmp: Path) -> str:
    port = free_port()
    fake = children.spawn("fake", [*NEXUS, "fake-backend", "--host", "127.0.0.1", "--port", str(port),
                                   "--model", "m", "--name", "fake"], side="load", log=tmp / "fake.log")
    url = f"http://127.0.0.1:{port}"
    procs.wait_http(url + "/_fake/requests", proc=fake, log=tmp / "fake.log")
    return url


def latency(args: argparse.Namespace, tmp: Path, children: procs.Children, fake_url: str) -> dict[str, Any]:
    wrk = wrklib.find_wrk()
    if wrk is None and any(c > 1 for c in args.concurrency):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    body = json.dumps(CHAT).encode()
    scripts = {
        "unkeyed": wrklib.write_post_script(tmp / "unkeyed.lua", body),
        "keyed": wrklib.write_post_script(tmp / "keyed.lua", body, {"Authorization": f"Bearer {KEY}"}),
    } if wrk else {}
    runs: dict[int, dict[str, list[dict]]] = {c: {"unkeyed": [], "keyed": []} for c in args.concurrency}
    for i in range(args.rounds):
        # Both gateways start afresh every round, in alternating order: in an A/A run (two identical unkeyed
        # gateways) the one started second measured up to 6 % slower at c=32, so a fixed order would bias it.
        order = ("unkeyed", "keyed") if i % 2 == 0 else ("keyed", "unkeyed")
        _round(children, wrk, tmp / f"round-{i}", fake_url, scripts, order, args, runs)
    return {"cells": [_cell(c, runs[c]) for c in args.concurrency]}


def _one_client(gws: dict[str, tuple[str, Any, Any]], args: argparse.Namespace) -> dict[str, dict]:
    """c=1, requests alternating between the two gateways one by one on a keep-alive connection each."""
    body = json.dumps(CHAT).encode()
    clients = {name: interleave.RawClient(gw[0], PATH, body, {"Authorization": f"Bearer {KEY}"} if name == "keyed"
                                          else None) for name, gw in gws.items()}
    try:
        interleave.interleaved(clients, 300)  # warm-up
        if b"x-ratelimit-limit-requests" not in clients["keyed"].last_head.lower():
            raise SystemExit("keyed gateway: no x-ratelimit headers, its limits are not applied")
        cpu0 = {name: procs.cpu_seconds(gw[2].pid) for name, gw in gws.items()}
        n = max(500, int(args.duration * 700))  # about `duration` seconds per gateway at ~0.7 ms a request
        lat = interleave.interleaved(clients, n)
        return {name: {"p50_ms": statistics.median(v) / 1e6, "rps": 1e9 / statistics.fmean(v), "requests": n,
                       "error_total": 0,
                       "cpu_us": (procs.cpu_seconds(gws[name][2].pid) - cpu0[name]) / n * 1e6}
                for name, v in lat.items()}
    finally:
        for client in clients.values():
            client.close()


def _round(children: procs.Children, wrk: str | None, tmp: Path, fake_url: str, scripts: dict[str, Path],
           order: tuple[str, str], args: argparse.Namespace, runs: dict[int, dict[str, list[dict]]]) -> None:
    gws: dict[str, tuple[str, Any, Any]] = {}
    try:
        for name in order:
            gws[name] = _gateway(children, tmp, name, fake_url, keyed=name == "keyed")
        for c in args.concurrency:
            if c == 1:
                for name, run in _one_client(gws, args).items():
                    runs[c][name].append(run)
                continue
            for name in order:
                url, pid = gws[name][0] + PATH, gws[name][2].pid
                wrklib.run(children, wrk, url, scripts[name], connections=4, duration_s=1)  # warm-up
                cpu0 = procs.cpu_seconds(pid)
                run = wrklib.run(children, wrk, url, scripts[name], connections=c, duration_s=args.duration)
                if run["error_total"]:
                    raise SystemExit(f"{name}: wrk saw errors {run['errors']}")
                # the gateway process's CPU (request path and its in-process worker) per request served
                run["cpu_us"] = (procs.cpu_seconds(pid) - cpu0) / max(1, run["requests"]) * 1e6
                runs[c][name].append(run)
    finally:
        for _url, redis, gw in gws.values():
            children.stop(gw)
            redis.stop()


def _cell(c: int, runs: dict[str, list[dict]]) -> dict[str, Any]:
    """One concurrency's figures: medians per gateway, and the median of the rounds' paired differences (each
    round ran both gateways back to back, so a difference within a round is the least disturbed by drift)."""
    med = {m: {n: statistics.median(r[m] for r in rs) for n, rs in runs.items()} for m in ("p50_ms", "rps", "cpu_us")}
    paired = [(k["p50_ms"] - u["p50_ms"]) * 1000 for u, k in zip(runs["unkeyed"], runs["keyed"], strict=True)]
    cpu = [k["cpu_us"] - u["cpu_us"] for u, k in zip(runs["unkeyed"], runs["keyed"], strict=True)]
    errors = sum(r["error_total"] for rs in runs.values() for r in rs)
    cell = {"concurrency": c, "p50_ms": med["p50_ms"], "rps": med["rps"], "cpu_us_per_request": med["cpu_us"],
            "errors": errors, "rounds": len(paired), "added_p50_us": round(statistics.median(paired), 1),
            "added_p50_us_rounds": [round(x, 1) for x in paired], "added_cpu_us": round(statistics.median(cpu), 1)}
    p50 = med["p50_ms"]
    print(f"c={c:<3} unkeyed p50 {p50['unkeyed'] * 1000:7.0f} us  keyed+limited p50 {p50['keyed'] * 1000:7.0f} us  "
          f"added {cell['added_p50_us']:+6.0f} us (median of {len(paired)} paired rounds: "
          f"{', '.join(f'{x:+.0f}' for x in paired)}); gateway CPU per request {med['cpu_us']['unkeyed']:.0f} vs "
          f"{med['cpu_us']['keyed']:.0f} us ({cell['added_cpu_us']:+.0f}); rps {med['rps']['unkeyed']:.0f} vs "
          f"{med['rps']['keyed']:.0f}, errors {errors}", flush=True)
    return cell


async def _admin(http, c, method, path, body=None):
    async with http.request(method, f"{c.admin.url}/admin/v1{path}", json=body, headers=c.admin_headers) as r:
        return r.status, await r.json(content_type=None)


def _peak(times: list[tuple[float, int]], window: float) -> int:
    times = sorted(times)
    best = total = lo = 0
    for t, w in times:
        total += w
        while times[lo][0] <= t - window:
            total -= times[lo][1]
            lo += 1
        best = max(best, total)
    return best


async def _hammer(http, urls, key, seconds) -> int:
    cycle, stop, used = itertools.cycle(urls), time.monotonic() + seconds, [0]

    async def client():
        while time.monotonic() < stop:
            async with http.post(f"{next(cycle)}/v1/chat/completions", json=CHAT,
                                 headers={"Authorization": f"Bearer {key}"}) as r:
                out = await r.json(content_type=None)
                if r.status == 200:
                    used[0] = out["usage"]["total_tokens"]
                else:
                    await asyncio.sleep(0.05)

    await asyncio.gather(*(client() for _ in range(32)))
    return used[0]


async def _cluster(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    c = LocalCluster(tmp / "cluster", routers=3, workers=2, fakes=[FakeSpec("local")],
                     config={"redis": {"snapshot_poll_seconds": 5.0}})
    await asyncio.to_thread(c.start)
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as http:
            urls = [r.url for r in c.routers]
            fake = c.fakes[0].url
            for kind, limit in (("rpm", 60), ("tpm", 2000)):
                _, key = await _admin(http, c, "POST", "/keys", {"name": kind, kind: limit})
                await asyncio.sleep(1.0)
                async with http.post(f"{fake}/_fake/reset"):
                    pass
                used = await _hammer(http, urls, key["key"], args.rate_seconds)
                async with http.get(f"{fake}/_fake/requests") as r:
                    seen = [x["ts"] for x in await r.json() if x["method"] == "POST"]
                weight = 1 if kind == "rpm" else used
                peak = _peak([(t, weight) for t in seen], 60.0)
                out[kind] = {"limit": limit, "peak_in_any_60s": peak, "served": len(seen), "tokens_each": used}
                print(f"{kind} = {limit}, 32 clients x 3 replicas for {args.rate_seconds:g} s: {len(seen)} served, "
                      f"peak in any sliding 60 s window {peak} (limit {limit}, over by {max(0, peak - limit)})",
                      flush=True)
            keys = [(await _admin(http, c, "POST", "/keys", {"name": f"r{i}"}))[1] for i in range(50)]
            await asyncio.sleep(1.0)
            took = []
            for k in keys:
                await _admin(http, c, "DELETE", f"/keys/{k['id']}")
                t0, pending = time.monotonic(), set(urls)
                while pending:
                    for url in list(pending):
                        async with http.post(f"{url}/v1/chat/completions", json=CHAT,
                                             headers={"Authorization": f"Bearer {k['key']}"}) as r:
                            if r.status == 401:
                                pending.discard(url)
                took.append(time.monotonic() - t0)
            p99 = statistics.quantiles(took, n=100)[98]
            out["revocation"] = {"p50_ms": statistics.median(took) * 1000, "p99_ms": p99 * 1000}
            print(f"revocation to 401 on all 3 replicas, 50 revocations: p50 {statistics.median(took) * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms", flush=True)
    finally:
        await asyncio.to_thread(c.stop)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short cells (3 s) and a 20 s rate run")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 32])
    p.add_argument("--rate-seconds", type=float, default=120.0)
    p.add_argument("--no-cluster", action="store_true")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-inprocess", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.duration, args.rounds, args.rate_seconds = 3.0, 1, 20.0
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-tenancy-") as d:
        tmp = Path(d)
        children = procs.Children(procs.plan_pinning(True))
        try:
            if not (args.no_inprocess and args.no_latency):
                fake_url = _fake(children, tmp)
            if not args.no_inprocess:
                result["in_process"] = asyncio.run(_inprocess(args, tmp, fake_url))
            if not args.no_latency:
                result["latency"] = latency(args, tmp, children, fake_url)
        finally:
            children.stop_all()
        if not args.no_cluster:
            result["cluster"] = asyncio.run(_cluster(args, tmp))
    out = ROOT / "bench" / "results" / "tenancy-latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
