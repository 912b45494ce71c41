"""`/admin/v1/discovery`: the discovery job's backends through the admin API; pin and ignore race-safely."""

from __future__ import annotations

import asyncio
import json

from nexus.cli import main as nexus
from nexus.core.config import DiscoveryConfig
from nexus.core.fleet.discovery import Announcement
from nexus.core.fleet.store import read_ignored
from nexus.core.state import read_desired
from nexus.worker.discovery import run_discovery
from tests.controlplane.admin.conftest import TOKEN
from tests.harness import settings_for

BOX = Announcement("_ollama._tcp.local.", "gpu-box", "10.1.2.3", 11434, {})


async def _discover(redis, seen, now=100.0):
    settings = settings_for([], discovery=DiscoveryConfig(enabled=True).model_dump())
    return await run_discovery(redis, settings, lambda: now, seen=seen)


async def test_discovered_backends_are_listed_then_pinned_to_static(admin):
    assert (await _discover(admin.redis, [BOX]))["added"] == ["gpu-box"]
    status, body = await admin.call("GET", "/discovery")
    assert status == 200 and [(b["name"], b["service"], b["last_seen"]) for b in body["backends"]] == [
        ("gpu-box", "_ollama._tcp.local.", 100.0)
    ]
    status, backend = await admin.call("GET", "/backends/gpu-box")
    assert (status, backend["source"], backend["zone_effective"]) == (200, "discovered", "restricted")
    assert (await admin.call("POST", "/discovery/gpu-box/pin"))[0] == 200
    assert (await admin.call("POST", "/discovery/gpu-box/pin"))[0] == 409  # static now
    assert (await _discover(admin.redis, [], now=10_000.0))["removed"] == []  # pinned: past any grace, kept
    _, desired = await read_desired(admin.redis)
    assert {b.name: b.source.value for b in desired.backends}["gpu-box"] == "static"


async def test_an_ignored_backend_is_removed_and_stays_away_until_unignored(admin):
    await _discover(admin.redis, [BOX])
    assert (await admin.call("POST", "/discovery/local/ignore"))[0] == 409  # static backends are not discovery's
    assert (await admin.call("POST", "/discovery/nope/ignore"))[0] == 404
    assert (await admin.call("POST", "/discovery/gpu-box/ignore"))[0] == 200
    assert list(await read_ignored(admin.redis)) == ["http://10.1.2.3:11434"]
    assert (await _discover(admin.redis, [BOX], now=101.0))["added"] == []
    _, body = await admin.call("GET", "/discovery")
    assert body["backends"] == [] and body["ignored"][0]["name"] == "gpu-box"
    assert (await admin.call("POST", "/discovery/unignore", json={"url": "ftp://x"}))[0] == 422
    assert await admin.call("POST", "/discovery/unignore", json={"url": "http://10.1.2.3:11434"}) == (
        200, {"removed": True}
    )
    assert (await _discover(admin.redis, [BOX], now=102.0))["added"] == ["gpu-box"]


async def test_the_cli_lists_pins_ignores_and_submits_lifecycle_operations(admin, capsys):
    await _discover(admin.redis, [BOX, Announcement("_ollama._tcp.local.", "spare", "10.1.2.4", 11434, {})])
    cli = ["--admin-url", admin.url, "--token", TOKEN]
    assert await asyncio.to_thread(nexus, ["discovery", "list", *cli]) == 0
    listed = capsys.readouterr().out
    assert "gpu-box" in listed and "http://10.1.2.3:11434" in listed and "_ollama._tcp.local." in listed
    assert await asyncio.to_thread(nexus, ["discovery", "pin", "gpu-box", *cli]) == 0
    assert "pinned" in capsys.readouterr().out
    assert await asyncio.to_thread(nexus, ["discovery", "pin", "gpu-box", *cli]) == 2  # 409: static already
    assert await asyncio.to_thread(nexus, ["discovery", "ignore", "spare", *cli]) == 0
    assert await asyncio.to_thread(nexus, ["discovery", "ignore", *cli]) == 2  # a name is needed
    capsys.readouterr()
    assert await asyncio.to_thread(nexus, ["models", "load", "m", "--backend", "gpu-box", "--json", *cli]) == 0
    op = json.loads(capsys.readouterr().out)
    assert (op["kind"], op["backend"], op["model"], op["state"]) == ("load", "gpu-box", "m", "pending")
    assert await asyncio.to_thread(nexus, ["models", "load", "m", "--backend", "local", *cli]) == 2  # vllm: 409
    migrate = ["models", "migrate", "m", "--from", "gpu-box", "--to", "nope", *cli]
    assert await asyncio.to_thread(nexus, migrate) == 4  # 404
    assert await asyncio.to_thread(nexus, ["models", "list", *cli]) == 0
