"""Fixtures shared by every test package.

- `redis_server` (session): ONE real embedded redis-server for the whole run, in a temporary data dir.
  Tests that stop, kill or restart Redis must start their own `EmbeddedRedis`, never touch this one.
- `fakes` (function): `await fakes(name, models, **options)` starts a fake backend, stopped after the test.
- `redis` (function): a `redis.asyncio.Redis` on that server, flushed before the test and closed after.
  It uses `decode_responses=False`: replies are bytes, as production clients get them (orjson decodes
  bytes directly); `nexus.core.state` accepts either kind of client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from nexus.core.embedded_redis import EmbeddedRedis
from nexus.tools.fake_backend import FakeBackend
from tests.harness import fake_backend

FakeFactory = Callable[..., Awaitable[FakeBackend]]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=False)
    try:
        await client.flushall()
        yield client
    finally:
        # aclose() (not close()) releases the pool's connections: no unclosed-connection ResourceWarning.
        await client.aclose()


@pytest.fixture
async def fakes() -> AsyncIterator[FakeFactory]:
    started: list[FakeBackend] = []

    async def make(name: str, models: tuple[str, ...] = ("m",), **options: Any) -> FakeBackend:
        fake = await fake_backend(name, models, **options)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.stop()
