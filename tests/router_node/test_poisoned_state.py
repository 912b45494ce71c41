"""A desired state that cannot be built is never fatal (issue 12, finding 1), over real HTTP and Redis.

`PUT /admin/v1/policies` with `gpt-[z-a]` was accepted; the refresher's task then died silently (the node
stayed ready on its old snapshot for ever and never applied later fixes), and after a restart no router
could start. Now the admin API refuses it (the glob parser that compiles patterns validates them), and a
bad value that reaches Redis some other way (an older release, a hand edit) leaves every node on its last
good snapshot, saying so: a log line with the config version, `nexus_snapshot_build_failures_total`, the
`/ready` detail, its heartbeat (admin nodes view, `nexus nodes`); it retries, and applies the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from nexus.cli import main as nexus
from nexus.controlplane.admin import create_admin_app
from nexus.core import keys
from nexus.core.config import PolicyConfig
from nexus.core.state import put_routing, read_desired
from nexus.core.telemetry_store import read_heartbeats
from tests.harness import AppServer, eventually
from tests.router_node.conftest import backend_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
TOKEN = "poison-test-token-0123456789"


async def poison(redis: Redis, pattern: str) -> int:
    """Append a policy with `pattern` to the stored routing, past every validation, as a foreign writer
    would; bump the version and announce it. Returns the new version."""
    raw = await redis.get(keys.CONFIG_ROUTING)
    routing = orjson.loads(raw) if raw else {}
    routing.setdefault("policies", []).append({"model_pattern": pattern})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.CONFIG_ROUTING, orjson.dumps(routing))
        pipe.incr(keys.CONFIG_VERSION)
        version = (await pipe.execute())[1]
    await redis.publish(keys.EVENTS_CHANNEL, orjson.dumps({"version": version, "kind": "hand-edit", "at": time.time()}))
    return int(version)


async def metric(http, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def ready(http, url: str) -> tuple[int, dict]:
    async with http.get(f"{url}/ready") as r:
        return r.status, await r.json()


@pytest.mark.parametrize("pattern", ["gpt-[z-a]", "*" * 1000], ids=["reversed-range", "1000-stars"])
async def test_the_admin_api_refuses_a_pattern_that_cannot_compile(redis_server, redis, http, pattern):
    from nexus.core.state import seed_desired
    from tests.harness import settings_for

    settings = settings_for([], redis={"url": redis_server.url})
    await seed_desired(redis, settings.desired())
    admin = await AppServer(create_admin_app(settings, token=TOKEN)).start()
    try:
        before = await read_desired(redis)
        async with http.put(f"{admin.url}/admin/v1/policies", json=[{"model_pattern": pattern}],
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 422, await r.text()
            assert "model_pattern" in await r.text()
        assert await read_desired(redis) == before
    finally:
        await admin.stop()


async def test_a_running_node_keeps_its_last_good_snapshot_says_so_and_applies_the_fix(
    fakes, gateways, http, redis, redis_server, caplog, capsys
):
    caplog.set_level(logging.ERROR, logger="nexus.refresher")
    gw = await gateways([backend_for(await fakes("local"))])
    good = gw.node.snapshot.version
    admin = await AppServer(create_admin_app(gw.node.settings, redis, token=TOKEN)).start()
    try:
        bad = await poison(redis, "gpt-[z-a]")
        await eventually(lambda: gw.node.refresher.failing_version == bad)
        # still serving, on the last good snapshot
        async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200
        assert gw.node.snapshot.version == good
        status, body = await ready(http, gw.url)
        assert status == 200 and body["snapshot_version"] == good
        assert body["failing_config_version"] == bad and "z-a" in body["snapshot_error"]
        assert await metric(http, gw.url, "nexus_snapshot_build_failures_total") >= 1
        assert any(f"config version {bad}" in rec.getMessage() for rec in caplog.records)

        async def reported() -> bool:
            beats = {b.node: b for b in await read_heartbeats(redis)}
            return beats[gw.node.node_id].failing_version == bad

        await eventually(reported)
        async with http.get(f"{admin.url}/admin/v1/nodes", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            [node] = await r.json()
        assert node["failing_version"] == bad and "z-a" in node["snapshot_error"]
        argv = ["nodes", "--admin-url", admin.url, "--token", TOKEN]
        assert await asyncio.to_thread(nexus, argv) == 0
        assert f"cannot build v{bad}" in capsys.readouterr().out

        # retried on every poll, so the fix (any later good version) is applied
        await put_routing(redis, gw.node.refresher.desired.routing.model_copy(
            update={"policies": [PolicyConfig(model_pattern="gpt-[a-z]*")]}))
        await eventually(lambda: gw.node.snapshot.version > bad)
        assert gw.node.refresher.failing_version is None
        status, body = await ready(http, gw.url)
        assert status == 200 and "snapshot_error" not in body
    finally:
        await admin.stop()


async def test_a_node_starting_on_a_poisoned_store_starts_unready_and_recovers(fakes, gateways, http, redis):
    first = await gateways([backend_for(await fakes("local"))])
    await poison(redis, "gpt-[z-a]")
    await first.stop()
    # a restart: the process starts (no crash in the lifespan), answers /health, is not ready, says why
    gw = await gateways([backend_for(await fakes("local2", ("m",)), "local")], wait_ready=False)
    async with http.get(f"{gw.url}/health") as r:
        assert r.status == 200
    await eventually(lambda: gw.node.refresher.failing_version is not None)
    status, body = await ready(http, gw.url)
    assert status == 503 and "z-a" in body["snapshot_error"], json.dumps(body)
    _, desired = await read_desired_unchecked(redis)
    await put_routing(redis, desired)
    await eventually(lambda: gw.node.ready, timeout=10)


async def read_desired_unchecked(redis: Redis):
    """The stored routing without the poisoned policy (the store itself cannot be read validated)."""
    from nexus.core.config import RoutingConfig

    raw = orjson.loads(await redis.get(keys.CONFIG_ROUTING))
    raw["policies"] = [p for p in raw.get("policies", []) if p["model_pattern"] != "gpt-[z-a]"]
    return None, RoutingConfig.model_validate(raw)
