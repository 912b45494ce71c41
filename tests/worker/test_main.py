"""nexus.worker.main: the in-process runner's lifecycle and `nexus worker`'s blocking entry point (in a real
subprocess, stopped by SIGTERM)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.model import HealthState
from nexus.core.state import read_health
from nexus.worker import settings as worker_settings_module
from nexus.worker.jobs import CTX_KEY, HEALTH_JOB
from nexus.worker.main import ThreadedWorker, start_in_process
from tests.harness import eventually
from tests.worker.conftest import FakeFactory, worker_settings_for


async def test_start_and_stop_in_process(redis_server: EmbeddedRedis, redis: Redis, fakes: FakeFactory) -> None:
    fake = await fakes("a")
    settings = worker_settings_for([{"name": "a", "url": fake.url}])
    handle = await start_in_process(settings, redis_server.url, poll_delay=0.05)
    assert handle.running and CTX_KEY in handle.worker.ctx
    await eventually(lambda: _state(redis, "a"), timeout=10)  # health runs once at start-up
    await handle.stop()
    assert not handle.running and CTX_KEY not in handle.worker.ctx  # the HTTP session was closed
    await handle.stop()  # idempotent


async def test_threaded_worker_runs_on_its_own_thread_and_stops(
    redis_server: EmbeddedRedis, redis: Redis, fakes: FakeFactory
) -> None:
    fake = await fakes("a")
    worker = await ThreadedWorker(
        worker_settings_for([{"name": "a", "url": fake.url}]), redis_server.url, poll_delay=0.05
    ).start()
    assert any(t.name == "nexus-worker" for t in threading.enumerate())
    await eventually(lambda: _state(redis, "a"), timeout=10)
    await worker.stop()
    assert not any(t.name == "nexus-worker" for t in threading.enumerate())
    await worker.stop()  # idempotent


async def test_threaded_worker_reports_a_start_failure() -> None:
    with pytest.raises(RedisConnectionError):  # what arq raised on the worker thread reaches the caller
        await ThreadedWorker(worker_settings_for(), "redis://127.0.0.1:1/0").start(timeout=20)


async def _state(redis: Redis, name: str) -> HealthState | None:
    rec = (await read_health(redis)).get(name)
    return rec.state if rec else None


async def test_stop_before_start_up_completes(redis_server: EmbeddedRedis, redis: Redis) -> None:
    handle = await start_in_process(worker_settings_for(), redis_server.url, wait=False)
    await asyncio.wait_for(handle.stop(grace_seconds=0), timeout=10)
    assert not handle.running


def test_lazy_worker_settings_for_the_arq_cli(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis) -> None:
    monkeypatch.setenv("NEXUS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("NEXUS_HEALTH_CHECK_INTERVAL_SECONDS", "5")
    cls = worker_settings_module.WorkerSettings
    assert {cj.name: cj.second for cj in cls.cron_jobs}[HEALTH_JOB] == set(range(0, 60, 5))
    with pytest.raises(AttributeError):
        _ = worker_settings_module.NoSuchThing


RUN_WORKER = """
import sys
from nexus.core.config import load_settings
from nexus.worker.main import run_worker

backends = [{"name": "a", "url": sys.argv[2]}]
run_worker(load_settings(overrides={"backends": backends}, environ={}), sys.argv[1])
"""


async def test_run_worker_runs_until_sigterm(redis_server: EmbeddedRedis, redis: Redis, fakes: FakeFactory) -> None:
    fake = await fakes("a")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN_WORKER, redis_server.url, fake.url, stderr=asyncio.subprocess.PIPE
    )
    try:
        await eventually(lambda: _state(redis, "a"), timeout=20)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"nexus worker stopped" in err
