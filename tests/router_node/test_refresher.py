"""The snapshot refresher (issue 12, findings 6 and 1): builds run off the event loop and reuse a config
whose version did not change; a desired state that cannot be built is never fatal."""

from __future__ import annotations

import threading

from redis.asyncio import Redis

import controlplane.fetch as fetch
from controlplane.config import BackendConfig
from controlplane.state import put_backend, seed_desired
from router_node.refresher import SnapshotRefresher
from tests.harness import settings_for

BACKENDS = [{"name": "gpu", "url": "http://127.0.0.1:9", "type": "vllm", "models": ["m"]}]


async def test_builds_run_in_a_worker_thread_and_skip_an_unchanged_config(redis: Redis, monkeypatch):
    settings = settings_for(BACKENDS)
    await seed_desired(redis, settings.desired())
    threads: list[int] = []
    decodes: list[int] = []
    real_build, real_decode = fetch.build_snapshot, fetch.decode_config

    def build(*args, **kwargs):
        threads.append(threading.get_ident())
        return real_build(*args, **kwargs)

    def decode(reply):
        decodes.append(1)
        return real_decode(reply)

    monkeypatch.setattr(fetch, "build_snapshot", build)
    monkeypatch.setattr(fetch, "decode_config", decode)
    seen = []
    refresher = SnapshotRefresher(redis, settings, seen.append)
    await refresher.load()
    await refresher.refresh_once()
    await refresher.refresh_once()
    assert len(seen) == 3 and len(threads) == 3
    assert threading.get_ident() not in threads  # never on the event loop's thread
    assert len(decodes) == 1  # the two polls found the same version: the decoded config was reused
    await put_backend(redis, BackendConfig(name="new", url="http://127.0.0.1:9", models=["m"]))
    await refresher.refresh_once()
    assert len(decodes) == 2 and set(seen[-1].backends) == {"gpu", "new"}
