"""Tenancy costs and bounds, measured: what a key and its rate limits add to a request, what the limits let
through across replicas, and how fast a revocation reaches every replica.

0. CPU per request of the keyed path, in process (the figure the machine's noise does not drown): a request's
   authentication (a managed key: HMAC-SHA256 and the table lookup), its admission from warm RPM and TPM
   allowances (the rate headers included) and its settlement, against the same steps for an unkeyed gateway;
   the allowances are granted by a real (embedded) Redis, so their round trips (about one per second per kind)
   are counted too.
1. Added latency: two `nexus serve` gateways (each on its own embedded Redis) in front of one zero-latency fake
   backend: one without client keys, one whose only client key has RPM and TPM limits far above the load (every
   request authenticates, takes from its allowances and settles, none is refused). wrk (`-t1 -c C`, a Lua POST
   with the key's Authorization header) at c=1 and c=32. Each round starts both gateways afresh, in alternating
   order, and measures them back to back; the headline is the median over rounds of keyed minus unkeyed p50.
2. The acceptance run of RPM at full scale: `LocalCluster` (Redis, 3 routers, 2 workers, admin, the fake), a key
   with `rpm = 60`, 32 clients spread over the 3 replicas for `--rate-seconds` (default 120): the largest number
   of requests the backend received in any sliding 60 s window (bound: 60; see docs/tenancy.md), then the same
   for `tpm`. And 50 revocations: seconds until all 3 replicas answer 401, p50/p99.

    python bench/tenancy.py [--quick] [--duration S] [--rate-seconds S] [--no-cluster] [--no-latency] [--no-cpu]
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.lib import procs  # noqa: E402
from bench.lib import wrk as wrklib  # noqa: E402
from nexus.core.embedded_redis import EmbeddedRedis  # noqa: E402
from nexus.core.tenancy import KeyConfig, hash_key  # noqa: E402
from nexus.router_node.rates import RateGate  # noqa: E402
from nexus.router_node.tenants import TenantBook, authenticate  # noqa: E402
from nexus.tools.devcluster import FakeSpec, LocalCluster, free_port  # noqa: E402

NEXUS = [sys.executable, "-m", "nexus.cli"]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say hello in one short sentence."}], "max_tokens": 16}
KEY = "nx-bench-key-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_ID = "key_00000000be0c"


def _gateway(children: procs.Children, tmp: Path, name: str, fake_url: str, keyed: bool) -> tuple[str, Any, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    redis = EmbeddedRedis(tmp / f"redis-{name}")
    redis.start()
    port = free_port()
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "redis": {"url": redis.url},
        "backends": [{"name": "fake", "url": fake_url, "type": "vllm", "max_concurrency": 10_000, "models": ["m"]}],
    }
    if keyed:
        digest = "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
        config["keys"] = [{"id": KEY_ID, "name": "bench", "digest": digest, "rpm": 100_000_000, "tpm": 10**11}]
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


async def _cpu_cell(book: TenantBook, gate: RateGate, headers: list, n: int) -> float:
    """Microseconds per request of authenticate + admit + settle, over `n` requests."""
    t0 = time.perf_counter()
    for _ in range(n):
        tenant = authenticate(book, headers)
        ticket = await gate.admit(tenant, 40)
        gate.settle(ticket, 25)
        if len(gate.book.corrections) > 512:  # what the node's maintenance (every 0.1 s) would send
            await gate.maintain()
    return (time.perf_counter() - t0) / n * 1e6


async def _cpu(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    redis_server = EmbeddedRedis(tmp / "redis-cpu")
    redis_server.start()
    redis = Redis.from_url(redis_server.url)
    try:
        secret = b"s" * 32
        key = KeyConfig(id=KEY_ID, name="bench", digest=hash_key(secret, KEY), rpm=100_000_000, tpm=10**11)
        keyed = TenantBook([], time.time)
        keyed.secret = secret
        keyed.rebuild([key], [])
        plain = TenantBook([], time.time)
        gates = {"unkeyed": RateGate(redis, "bench-a"), "keyed": RateGate(redis, "bench-b")}
        books = {"unkeyed": plain, "keyed": keyed}
        headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                   (b"authorization", f"Bearer {KEY}".encode())]
        n = 2_000 if args.quick else 20_000
        for name in books:  # warm-up: the first allowances are granted here
            await _cpu_cell(books[name], gates[name], headers, 500)
        runs: dict[str, list[float]] = {"unkeyed": [], "keyed": []}
        for _ in range(5):  # interleaved, the best of five: the least disturbed by the machine
            for name in books:
                runs[name].append(await _cpu_cell(books[name], gates[name], headers, n))
        best = {name: min(v) for name, v in runs.items()}
        added = best["keyed"] - best["unkeyed"]
        print(f"CPU per request in process: unkeyed {best['unkeyed']:.1f} us, keyed+limited {best['keyed']:.1f} us, "
              f"added {added:.1f} us (authenticate + admit + settle, {n} requests x 5, best)", flush=True)
        return {"unkeyed_us": round(best["unkeyed"], 2), "keyed_us": round(best["keyed"], 2),
                "added_us": round(added, 2), "requests_per_run": n}
    finally:
        await redis.aclose()
        redis_server.stop()


def latency(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    wrk = wrklib.find_wrk()
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    children = procs.Children(procs.plan_pinning(True))
    try:
        fake_port = free_port()
        fake = children.spawn("fake", [*NEXUS, "fake-backend", "--host", "127.0.0.1", "--port", str(fake_port),
                                       "--model", "m", "--name", "fake"], side="load", log=tmp / "fake.log")
        fake_url = f"http://127.0.0.1:{fake_port}"
        procs.wait_http(fake_url + "/_fake/requests", proc=fake, log=tmp / "fake.log")
        body = json.dumps(CHAT).encode()
        scripts = {
            "unkeyed": wrklib.write_post_script(tmp / "unkeyed.lua", body),
            "keyed": wrklib.write_post_script(tmp / "keyed.lua", body, {"Authorization": f"Bearer {KEY}"}),
        }
        runs: dict[int, dict[str, list[dict]]] = {c: {"unkeyed": [], "keyed": []} for c in args.concurrency}
        for i in range(args.rounds):
            # Both gateways start afresh every round, in alternating order, and are measured in that order: in an
            # A/A run (two identical unkeyed gateways) the one started second measured up to 6 % slower at c=32,
            # so a fixed order would bias the difference.
            order = ("unkeyed", "keyed") if i % 2 == 0 else ("keyed", "unkeyed")
            _round(children, wrk, tmp / f"round-{i}", fake_url, scripts, order, args, runs)
        return {"cells": [_cell(c, runs[c]) for c in args.concurrency]}
    finally:
        children.stop_all()


def _round(children: procs.Children, wrk: str, tmp: Path, fake_url: str, scripts: dict[str, Path],
           order: tuple[str, str], args: argparse.Namespace, runs: dict[int, dict[str, list[dict]]]) -> None:
    gws: dict[str, tuple[str, Any, Any]] = {}
    try:
        for name in order:
            gws[name] = _gateway(children, tmp, name, fake_url, keyed=name == "keyed")
        urls = {name: gw[0] + "/v1/chat/completions" for name, gw in gws.items()}
        for name in order:  # warm-up, and a check that the keyed gateway really serves the key
            out = wrklib.run(children, wrk, urls[name], scripts[name], connections=4, duration_s=1)
            if out["error_total"]:
                raise SystemExit(f"{name}: warm-up answered errors {out['errors']}")
        for c in args.concurrency:
            for name in order:
                pid = gws[name][2].pid
                cpu0 = procs.cpu_seconds(pid)
                run = wrklib.run(children, wrk, urls[name], scripts[name], connections=c, duration_s=args.duration)
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
    p.add_argument("--no-cpu", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.duration, args.rounds, args.rate_seconds = 3.0, 1, 20.0
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-tenancy-") as d:
        tmp = Path(d)
        if not args.no_cpu:
            result["cpu"] = asyncio.run(_cpu(args, tmp))
        if not args.no_latency:
            result["latency"] = latency(args, tmp)
        if not args.no_cluster:
            result["cluster"] = asyncio.run(_cluster(args, tmp))
    out = ROOT / "bench" / "results" / "tenancy-latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
