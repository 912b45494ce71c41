"""Fixtures for worker tests: fake backends, in-process arq workers on the session Redis, telemetry records.

Everything a fixture starts is stopped by it after the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.connections import RedisSettings, create_pool
from arq.jobs import Job
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import NexusSettings
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.telemetry_store import TelemetryRecord
from nexus.tools.fake_backend import FakeBackend
from nexus.worker.main import WorkerHandle, build_worker, start_in_process
from tests.harness import eventually, settings_for

FakeFactory = Callable[..., Awaitable[FakeBackend]]
WorkerFactory = Callable[..., Awaitable[WorkerHandle]]

__all__ = ["FakeFactory", "RawServer", "WorkerFactory", "record", "run_tick", "worker_settings_for"]


class RawServer:
    """A TCP server on loopback that reads a request and answers `reply` verbatim, or (None) never
    answers at all: a hung backend, which the fake backend cannot be on its model-list endpoints."""

    def __init__(self, reply: bytes | None = None) -> None:
        self._reply = reply
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""
        self.log: list[tuple[str, str]] | None = None  # ("asked" | "given up", url), if a test shares a list

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self._reply is None:
                self._note("asked")
                await reader.read()  # until the client gives up and closes
                self._note("given up")
            else:
                writer.write(self._reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _note(self, event: str) -> None:
        if self.log is not None:
            self.log.append((event, self.url))

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None


def record(rid: str, ts: float, **fields: Any) -> TelemetryRecord:
    """A telemetry record as a router node writes it; defaults: backend b1, model m, node n1, ok."""
    base: dict[str, Any] = {"id": rid, "ts": ts, "node": "n1", "backend": "b1", "model": "m"}
    return TelemetryRecord(**{**base, **fields})


async def run_tick(
    redis_url: str, settings: NexusSettings, job: str, tick_ms: int, *, clock: Callable[[], float] = time.time
) -> tuple[int, Any]:
    """Run one tick of cron job `job` through a real arq worker (burst mode): enqueue it under its
    unique cron id, let the worker pick it up and finish. Returns (jobs the worker completed, result)."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=keys.WORKER_QUEUE)
    try:
        job_id = f"{job}:{tick_ms}"
        assert await pool.enqueue_job(job, _job_id=job_id, _queue_name=keys.WORKER_QUEUE) is not None
        worker = build_worker(settings, redis_url, jobs=[job], clock=clock, burst=True, poll_delay=0.02)
        for cj in worker.cron_jobs:  # only the enqueued tick: no scheduled one may fall due meanwhile
            cj.next_run = datetime.max.replace(tzinfo=UTC)
        handle = WorkerHandle(worker)
        await eventually(lambda: not handle.running, timeout=15)
        await handle.stop()
        result = await Job(job_id, pool, _queue_name=keys.WORKER_QUEUE).result(timeout=1)
        return worker.jobs_complete, result
    finally:
        await pool.aclose(close_connection_pool=True)


def worker_settings_for(backends: list[Mapping[str, Any]] | None = None, **sections: Any) -> NexusSettings:
    return settings_for(list(backends or []), **sections)


@pytest.fixture
async def raw_servers() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    started: list[RawServer] = []

    async def make(reply: bytes | None = None) -> RawServer:
        server = await RawServer(reply).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest.fixture
async def workers(redis_server: EmbeddedRedis, redis: Redis) -> AsyncIterator[WorkerFactory]:
    """`await workers(settings, **options)` -> an in-process arq worker on the (flushed) session Redis."""
    started: list[WorkerHandle] = []

    async def make(settings: NexusSettings, **options: Any) -> WorkerHandle:
        handle = await start_in_process(settings, redis_server.url, **{"poll_delay": 0.05, **options})
        started.append(handle)
        return handle

    yield make
    for handle in started:
        await handle.stop(grace_seconds=2.0)
