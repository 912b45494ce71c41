"""Model lifecycle end to end against two Ollama stand-ins (native API; a load takes 2 s, /api/ps reflects it):
a load in progress queues that model's requests instead of sending them to a backend still loading, and a
migrate under continuous traffic through two routers fails no request (load on the target first, then
unload the source)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import pytest

from nexus.tools.devcluster import free_port
from tests.e2e.conftest import chat
from tests.harness import eventually

pytestmark = pytest.mark.timeout(150)

MODEL = "llama3:8b"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def _get(http: aiohttp.ClientSession, url: str, **kw):
    async with http.get(url, **kw) as r:
        return await r.json()


async def test_load_queues_requests_and_migrate_under_traffic_fails_none(cluster, http, tmp_path):
    ports = {"box-a": free_port(), "box-b": free_port()}
    procs = []
    with open(tmp_path / "ollama.log", "ab") as log:
        for port in ports.values():
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nexus.cli", "fake-ollama", "--port", str(port), "--model", MODEL,
                 "--load-seconds", "2"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        try:
            for port in ports.values():
                async def up(port=port):
                    try:
                        return (await _get(http, f"http://127.0.0.1:{port}/api/tags"))["models"]
                    except aiohttp.ClientError:
                        return None
                await eventually(up, timeout=20, interval=0.05, what="the stand-ins answer")
            backends = [{"name": n, "url": f"http://127.0.0.1:{p}", "type": "ollama", "models": [MODEL]}
                        for n, p in ports.items()]
            c = await cluster(routers=2, workers=1, config={
                "backends": backends, "health_check": {"interval_seconds": 1},
                "redis": {"snapshot_poll_seconds": 0.25}, "lifecycle": {"poll_seconds": 0.1},
            })
            admin, h = c.admin.url + "/admin/v1", c.admin_headers
            fake = {n: f"http://127.0.0.1:{p}/_fake" for n, p in ports.items()}

            async def op_done(op_id: str):
                op = await _get(http, f"{admin}/models/ops/{op_id}", headers=h)
                assert op["state"] != "failed", op
                return op if op["state"] == "done" else None

            # 1. a load in progress queues the model's requests (the only backend is loading it)
            async with http.delete(f"{admin}/backends/box-b", headers=h) as r:
                assert r.status == 200
            async with http.post(f"{admin}/models/load", json={"backend": "box-a", "model": MODEL}, headers=h) as r:
                assert r.status == 202
                op = await r.json()

            async def marked():
                rows = (await _get(http, f"{admin}/models", headers=h))["models"]
                return any(x["backend"] == "box-a" and x["state"] == "loading" for x in rows)

            await eventually(marked, timeout=10, interval=0.05, what="box-a is loading the model")
            marked_at = time.time()

            async def routers_saw(since: float):  # every router built a snapshot after `since`
                nodes = await _get(http, f"{admin}/nodes", headers=h)
                return len(nodes) == 2 and all(
                    n["snapshot_age_seconds"] is not None and time.time() - n["snapshot_age_seconds"] > since
                    for n in nodes
                )

            await eventually(lambda: routers_saw(marked_at), timeout=10, interval=0.05,
                             what="both routers picked the mark up")
            status, headers, _ = await chat(http, c.routers[0].url, BODY)
            assert status == 200 and headers["X-Nexus-Lifecycle-Status"] == "loading=box-a"
            await eventually(lambda: op_done(op["id"]), timeout=20, interval=0.05, what="the load finishes")
            chats = [e for e in (await _get(http, fake["box-a"] + "/log"))["log"] if e["op"] == "chat"]
            assert chats and all(e["loaded_at_arrival"] for e in chats), chats  # queued, not sent mid-load
            rows = (await _get(http, f"{admin}/models", headers=h))["models"]
            assert [(x["backend"], x["model"], x["state"]) for x in rows] == [("box-a", MODEL, "loaded")]
            assert rows[0]["size_vram"] > 0

            # 2. migrate to box-b under continuous traffic through both routers: no request fails
            async with http.put(f"{admin}/backends/box-b", json=backends[1], headers=h) as r:
                assert r.status == 200
            results: list[tuple[int, str | None]] = []
            stop = asyncio.Event()

            async def traffic(url: str):
                while not stop.is_set():
                    s, hd, _ = await chat(http, url, BODY)
                    results.append((s, hd.get("X-Nexus-Backend")))

            async def both_routed():
                return all([(await chat(http, r.url, BODY))[0] == 200 for r in c.routers])

            await eventually(both_routed, timeout=10, interval=0.05, what="both routers serve the model")
            senders = [asyncio.create_task(traffic(r.url)) for r in c.routers for _ in range(2)]
            try:
                async def flowing(n: int):
                    return len(results) >= n

                await eventually(lambda: flowing(8), timeout=10, interval=0.05, what="traffic flows")
                body = {"model": MODEL, "from": "box-a", "to": "box-b"}
                async with http.post(f"{admin}/models/migrate", json=body, headers=h) as r:
                    assert r.status == 202
                    op = await r.json()
                await eventually(lambda: op_done(op["id"]), timeout=40, interval=0.05, what="the migrate finishes")
                migrated_at = time.time()
                done_at = len(results)
                await eventually(lambda: flowing(done_at + 8), timeout=10, interval=0.05,
                                 what="traffic goes on after the migrate")
            finally:
                stop.set()
                await asyncio.gather(*senders)
            assert len(results) > 20 and all(s == 200 for s, _ in results), [x for x in results if x[0] != 200]
            assert results[-1][1] == "box-b" and {b for _, b in results} == {"box-a", "box-b"}
            assert (await _get(http, fake["box-a"] + "/log"))["loaded"] == []
            assert (await _get(http, fake["box-b"] + "/log"))["loaded"] == [MODEL]
            events = [(e["op"], n, e["at"]) for n in ports for e in (await _get(http, fake[n] + "/log"))["log"]
                      if e["op"] in ("load", "unload")]
            b_load = max(at for op_, n, at in events if (op_, n) == ("load", "box-b"))
            a_unload = max(at for op_, n, at in events if (op_, n) == ("unload", "box-a"))
            assert b_load < a_unload
            a_chats = [e for e in (await _get(http, fake["box-a"] + "/log"))["log"] if e["op"] == "chat"]
            assert all(e["loaded_at_arrival"] for e in a_chats)  # the source was never asked to reload it
            # the migrate is done once the source is marked unloaded; a router sees that mark on its next
            # snapshot (up to snapshot_poll_seconds later), not at once
            await eventually(lambda: routers_saw(migrated_at), timeout=10, interval=0.05,
                             what="both routers picked the unloaded mark up")
            status, headers, _ = await chat(http, c.routers[1].url, BODY)
            assert (status, headers["X-Nexus-Backend"], headers["X-Nexus-Lifecycle-Status"]) == (
                200, "box-b", "unloaded=box-a"
            )
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
