"""Normal clients beside hostile ones: latency and gateway memory while slowloris and header bombs run.

Starts an embedded Redis, a zero-latency `nexus fake-backend` and one `nexus serve` (default limits), then:

1. quiet: sequential JSON chat completions from one kept-alive client for `--quiet-seconds`: p50/p99 and the
   gateway's RSS;
2. under attack: the same for `--seconds` (longer than the header timeout, so cuts and reconnects happen)
   while `--slowloris` connections (default 200) each send a request head
   one header line at a time, one line a second, reconnecting whenever the gateway cuts them, and `--bombs`
   connections (default 4) each stream an endless header as fast as they can (at most `--bomb-mb` MB per
   connection, so a gateway without limits cannot eat the machine), reconnecting when refused. Prints p50/p99
   of the normal requests, the gateway's RSS (now and peak, sampled every 100 ms), how many hostile
   connections were open at the end, and how often the gateway cut them.

Goals (issue 11): p50 under attack within 2x of quiet, RSS under 200 MB. Reported, never asserted.

    python bench/hostile.py [--quiet-seconds 5] [--seconds 15] [--slowloris 200] [--bombs 4] [--bomb-mb 100]
                            [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
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

from bench.lib import procs  # noqa: E402
from nexus.core.embedded_redis import EmbeddedRedis  # noqa: E402
from nexus.tools.devcluster import free_port  # noqa: E402

NEXUS = [sys.executable, "-m", "nexus.cli"]
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hello."}]}).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def normal_requests(url: str, seconds: float) -> list[float]:
    latencies = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            async with http.post(url, data=BODY, headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"normal request got HTTP {resp.status}")
            latencies.append((time.perf_counter() - t0) * 1000.0)
    return latencies


class Attack:
    """Hostile connections kept open (re-opened when cut) until `stop` is set."""

    def __init__(self, port: int, bomb_bytes: int) -> None:
        self.port = port
        self.bomb_bytes = bomb_bytes
        self.stop = asyncio.Event()
        self.open = 0
        self.cut = 0  # connections the gateway closed or refused

    async def _connection(self, talk: Any) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.cut += 1
                await asyncio.sleep(0.1)  # refused at accept: back off a little, then try again
                continue
            self.open += 1
            try:
                await talk(reader, writer)
            except (ConnectionError, OSError):
                pass
            finally:
                self.open -= 1
                writer.close()
            if not self.stop.is_set():
                self.cut += 1

    async def _slowloris(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        i = 0
        while not self.stop.is_set() and not reader.at_eof():
            writer.write(b"X-Slow-%d: 1\r\n" % i)
            await writer.drain()
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            if reader.at_eof() or (await _peek(reader)):
                return

    async def _bomb(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Bomb: ")
        chunk, sent = b"z" * 65536, 0
        while not self.stop.is_set() and sent < self.bomb_bytes:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            if await _peek(reader):
                return  # the gateway answered (431): it is cutting us off
        await self.stop.wait()  # capped: hold the connection (and whatever the gateway buffered) open

    def tasks(self, slowloris: int, bombs: int) -> list[asyncio.Task]:
        talks = [self._slowloris] * slowloris + [self._bomb] * bombs
        return [asyncio.ensure_future(self._connection(t)) for t in talks]


async def _peek(reader: asyncio.StreamReader) -> bool:
    """Whether the peer sent anything (a refusal) or closed, without waiting."""
    return bool(reader._buffer) or reader.at_eof()  # a StreamReader has no public peek


def _attacker(port: int, slowloris: int, bombs: int, bomb_bytes: int, stop: Any, stats: Any) -> None:
    """The hostile side, in a process of its own: its work never delays the measuring client's event loop."""

    async def go() -> None:
        attack = Attack(port, bomb_bytes)
        hostile = attack.tasks(slowloris, bombs)
        ticks = 0
        while not stop.is_set():
            await asyncio.sleep(0.05)
            ticks += 1
            stats["open"] = attack.open
            if ticks % 20 == 0:
                stats["cut"] = attack.cut
        stats["open_at_end"], stats["cut"] = attack.open, attack.cut
        attack.stop.set()
        await asyncio.gather(*hostile, return_exceptions=True)

    asyncio.run(go())


async def measure(args: argparse.Namespace, url: str, port: int, pid: int) -> dict[str, Any]:
    quiet = await normal_requests(url, args.quiet_seconds)
    rss_quiet = procs.memory_kb(pid)["VmRSS"] / 1024
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        stop, stats = manager.Event(), manager.dict(open=0, cut=0)
        attacker = ctx.Process(target=_attacker, args=(port, args.slowloris, args.bombs,
                                                       args.bomb_mb * 1024 * 1024, stop, stats))
        attacker.start()
        peak = {"rss": 0.0}
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                peak["rss"] = max(peak["rss"], procs.memory_kb(pid)["VmRSS"] / 1024)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.1)

        sampler = asyncio.ensure_future(sample())
        deadline = time.monotonic() + 30
        while stats["open"] < (args.slowloris + args.bombs) * 0.9 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # let the hostile connections open first
        opened = stats["open"]
        try:
            loud = await normal_requests(url, args.seconds)
            rss_attack = procs.memory_kb(pid)["VmRSS"] / 1024
        finally:
            stop.set()
            await asyncio.get_running_loop().run_in_executor(None, attacker.join, 30)
            done.set()
            await sampler
        open_at_end, cut = stats.get("open_at_end", stats["open"]), stats["cut"]
    return {
        "requests": {"quiet": len(quiet), "attack": len(loud)},
        "quiet": {"p50_ms": statistics.median(quiet), "p99_ms": percentile(quiet, 0.99), "rss_mb": rss_quiet},
        "attack": {
            "slowloris": args.slowloris, "bombs": args.bombs, "hostile_open_at_start": opened,
            "hostile_open_at_end": open_at_end, "hostile_cut": cut,
            "p50_ms": statistics.median(loud), "p99_ms": percentile(loud, 0.99),
            "rss_mb": rss_attack, "rss_peak_mb": peak["rss"],
        },
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    children = procs.Children(procs.plan_pinning(False))
    with tempfile.TemporaryDirectory(prefix="nexus-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        redis = EmbeddedRedis(tmp / "redis")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
        try:
            redis.start()
            fake_port, gw_port = free_port(), free_port()
            fake = children.spawn("fake", [*NEXUS, "fake-backend", "--host", "127.0.0.1", "--port", str(fake_port),
                                           "--model", "m", "--name", "fake"], side="load", env=env,
                                  log=tmp / "fake.log")
            procs.wait_http(f"http://127.0.0.1:{fake_port}/_fake/requests", proc=fake, log=tmp / "fake.log")
            config = {
                "server": {"host": "127.0.0.1", "port": gw_port},
                "redis": {"url": redis.url},
                "backends": [{"name": "fake", "url": f"http://127.0.0.1:{fake_port}", "type": "vllm",
                              "max_concurrency": 10_000, "models": ["m"]}],
            }
            (tmp / "nexus.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
            gateway = children.spawn("gateway", [*NEXUS, "serve", "--config", str(tmp / "nexus.toml")],
                                     side="gateway", env=env, log=tmp / "gateway.log")
            procs.wait_http(f"http://127.0.0.1:{gw_port}/ready", proc=gateway, log=tmp / "gateway.log")
            url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            return asyncio.run(measure(args, url, gw_port, gateway.pid))
        finally:
            children.stop_all()
            redis.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quiet-seconds", type=float, default=5.0, help="normal requests alone for this long")
    p.add_argument("--seconds", type=float, default=15.0,
                   help="normal requests under attack for this long (past the 10 s header timeout)")
    p.add_argument("--slowloris", type=int, default=200)
    p.add_argument("--bombs", type=int, default=4)
    p.add_argument("--bomb-mb", type=int, default=100)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args()
    result = run(args)
    q, a = result["quiet"], result["attack"]
    n = result["requests"]
    print(f"normal requests (sequential, one kept-alive client; {n['quiet']} quiet, {n['attack']} under attack)")
    print(f"  quiet:        p50 {q['p50_ms']:.2f} ms  p99 {q['p99_ms']:.2f} ms   gateway RSS {q['rss_mb']:.1f} MB")
    print(f"  under attack: p50 {a['p50_ms']:.2f} ms  p99 {a['p99_ms']:.2f} ms   gateway RSS {a['rss_mb']:.1f} MB "
          f"(peak {a['rss_peak_mb']:.1f} MB)")
    print(f"  attack: {a['slowloris']} slowloris + {a['bombs']} header bombs; open at start "
          f"{a['hostile_open_at_start']}, at end {a['hostile_open_at_end']}; "
          f"cut by the gateway {a['hostile_cut']} times")
    ratio = a["p50_ms"] / q["p50_ms"] if q["p50_ms"] else float("inf")
    print(f"goals: p50 within 2x of quiet: {'MET' if ratio <= 2 else 'MISS'} ({ratio:.2f}x); "
          f"RSS under 200 MB: {'MET' if a['rss_peak_mb'] < 200 else 'MISS'} ({a['rss_peak_mb']:.1f} MB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
