"""The snapshot refresher (issue 12, findings 6 and 1): builds run off the event loop and reuse a config
whose version did not change; a desired state that cannot be built is never fatal."""

from __future__ import annotations

import threading

from redis.asyncio import Redis

import nexus.core.fetch as fetch
from nexus.core.config import BackendConfig
from nexus.core.state import put_backend, seed_desired
from nexus.router_node.refresher import SnapshotRefresher
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


async def test_a_config_that_validates_but_cannot_be_built_is_never_fatal(redis: Redis, monkeypatch):
    # A bug or an unforeseen value in the builder (not a validation error): the refresher keeps the last good
    # snapshot, counts the failure, and recovers on its own once a build succeeds again.
    settings = settings_for(BACKENDS)
    await seed_desired(redis, settings.desired())
    failures: list[int] = []
    refresher = SnapshotRefresher(redis, settings, lambda _snap: None, on_build_failure=lambda: failures.append(1))
    good = await refresher.load()
    real_build = fetch.build_snapshot
    broken = {"on": True}

    def build(desired, *args, **kwargs):
        if broken["on"] and len(desired.backends) == 2:
            raise RuntimeError("boom")
        return real_build(desired, *args, **kwargs)

    monkeypatch.setattr(fetch, "build_snapshot", build)
    version = await put_backend(redis, BackendConfig(name="new", url="http://127.0.0.1:9", models=["m"]))
    await refresher.refresh_once()
    await refresher.refresh_once()
    assert refresher.snapshot is good and refresher.failing_version == version and len(failures) == 2
    assert "boom" in (refresher.last_error or "")
    broken["on"] = False
    await refresher.refresh_once()
    assert refresher.snapshot.version == version and refresher.failing_version is None
