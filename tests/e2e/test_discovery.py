"""Discovery end to end over real multicast DNS: a network namespace the test creates holds an Ollama stand-in
and a zeroconf announcer; two workers (one browsing at a time) on the root side of a veth pair discover it;
every router gets it in its snapshot within one browse interval and sends it traffic; once the announcer is
killed (no goodbye: its records would live on in caches for their TTL), it is removed after the grace period.

Multicast stays on the veth pair: the workers' zeroconf binds to the root-side address only, the namespace
has no route but its /30 and an `unreachable` default. Needs root (CI runs as root) and iproute2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from nexus.tools.devcluster import free_port
from tests.e2e.conftest import chat
from tests.harness import eventually

pytestmark = pytest.mark.timeout(150)

BROWSE_INTERVAL, GRACE = 2.0, 4.0
MODEL = "llama3:8b"


@dataclass
class Netns:
    name: str
    host_ip: str  # root side
    peer_ip: str  # inside the namespace


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("discovery's end-to-end test needs root and iproute2 (apt-get install -y iproute2)")
    tag = os.getpid() % 100_000
    name, a, b = f"nx18-{tag}", f"nx18a{tag}", f"nx18b{tag}"
    net = f"198.18.{tag % 250}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        _ip("link", "set", b, "netns", name)
        _ip("addr", "add", f"{net}.1/30", "dev", a)
        _ip("link", "set", a, "up")
        _ip("-n", name, "addr", "add", f"{net}.2/30", "dev", b)
        _ip("-n", name, "link", "set", b, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "unreachable", "default")  # nothing leaves the namespace but the pair
        yield Netns(name, f"{net}.1", f"{net}.2")
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _spawn_in(ns: Netns, args: list[str], log) -> subprocess.Popen[bytes]:
    cmd = ["ip", "netns", "exec", ns.name, sys.executable, "-m", "nexus.cli", *args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        os.killpg(p.pid, sig)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


async def test_an_announced_ollama_is_discovered_routed_to_and_removed_after_the_grace_period(
    cluster, http: aiohttp.ClientSession, netns: Netns, tmp_path
):
    config = {
        "discovery": {"enabled": True, "interfaces": [netns.host_ip], "browse_interval_seconds": BROWSE_INTERVAL,
                      "browse_seconds": 1.0, "grace_period_seconds": GRACE,
                      "allowed_networks": [f"{netns.peer_ip}/32"]},
        "health_check": {"interval_seconds": 1},
    }
    c = await cluster(routers=2, workers=2, config=config)
    admin = c.admin.url + "/admin/v1"
    port = free_port()
    with open(tmp_path / "ns.log", "ab") as log:
        ollama = _spawn_in(netns, ["fake-ollama", "--host", netns.peer_ip, "--port", str(port), "--model", MODEL,
                                   "--load-seconds", "0"], log)
        announcer = None
        try:
            async def ready():
                try:
                    async with http.get(f"http://{netns.peer_ip}:{port}/api/tags") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, timeout=20, interval=0.1, what="the stand-in answers inside the namespace")
            announcer = _spawn_in(netns, ["mdns-announce", "--name", "gpu-box", "--address", netns.peer_ip,
                                          "--port", str(port), "--txt", "type=ollama"], log)

            async def registered():
                return "announcing gpu-box._ollama._tcp.local." in (tmp_path / "ns.log").read_text()

            await eventually(registered, timeout=20, interval=0.1, what="the announcer registered its service")
            announced_at = time.monotonic()

            async def discovered():
                async with http.get(f"{admin}/discovery", headers=c.admin_headers) as r:
                    body = await r.json()
                return next((b for b in body["backends"] if b["url"] == f"http://{netns.peer_ip}:{port}"), None)

            found = await eventually(discovered, timeout=20, interval=0.1,
                                     what="the announced server is in desired state")
            assert (found["name"], found["type"], found["zone"]) == ("gpu-box", "ollama", "restricted")
            assert found["service"] == "_ollama._tcp.local."

            async def in_every_snapshot():
                async with http.get(f"{admin}/backends/gpu-box", headers=c.admin_headers) as r:
                    if r.status != 200:
                        return False
                    assert (await r.json())["source"] == "discovered"
                async with http.get(f"{admin}/nodes", headers=c.admin_headers) as r:
                    nodes = await r.json()
                async with http.get(f"{admin}/config/export", headers=c.admin_headers) as r:
                    version = int((await r.text()).split("\n", 1)[0].rsplit(" ", 1)[1])
                return len(nodes) == 2 and all(n["snapshot_version"] >= version for n in nodes)

            await eventually(in_every_snapshot, timeout=10, interval=0.1,
                             what="every router's snapshot has the discovered backend")
            # registered to every router's snapshot: at most one browse interval until the next tick, its browse
            # window (1 s), then a desired-state write that routers get by pub/sub; slack for a loaded machine
            took = time.monotonic() - announced_at
            print(f"announced -> in every router's snapshot: {took:.2f}s (browse interval {BROWSE_INTERVAL:g}s)")
            assert took < BROWSE_INTERVAL + 1.0 + 3.0

            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

            async def routed():
                answers = [await chat(http, r.url, body) for r in c.routers]
                return all(s == 200 and h.get("X-Nexus-Backend") == "gpu-box" for s, h, _ in answers)

            await eventually(routed, timeout=15, interval=0.1,
                             what="every router routes the model to the discovered backend")

            _stop(announcer, signal.SIGKILL)  # a crash: no goodbye packet
            killed_at = time.monotonic()

            async def gone():
                return await discovered() is None

            await eventually(gone, timeout=GRACE + 4 * BROWSE_INTERVAL + 10, interval=0.1,
                             what="the backend is removed after the grace period")
            # kept at least for the grace period after it was last seen (at most one interval before the kill)
            assert time.monotonic() - killed_at >= GRACE - BROWSE_INTERVAL
            async with http.get(f"{admin}/backends/gpu-box", headers=c.admin_headers) as r:
                assert r.status == 404
        finally:
            if announcer is not None:
                _stop(announcer)
            _stop(ollama)
