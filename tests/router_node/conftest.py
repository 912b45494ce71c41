"""Fixtures for router-node tests: fake backends and in-process gateways, all stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from nexus.core.embedded_redis import EmbeddedRedis
from nexus.tools.fake_backend import FakeBackend
from tests.harness import GatewayHarness, settings_for

GatewayFactory = Callable[..., Awaitable[GatewayHarness]]


@pytest.fixture
async def gateways(redis_server: EmbeddedRedis, redis: Redis) -> AsyncIterator[GatewayFactory]:
    """`await gateways(backends, **sections)` -> a started gateway on the session Redis (flushed)."""
    started: list[GatewayHarness] = []

    async def make(backends: list[Mapping[str, Any]], *, redis_url: str | None = None, node_id: str | None = None,
                   wait_ready: bool = True, **sections: Any) -> GatewayHarness:
        gw = GatewayHarness(settings_for(backends, **sections), redis_url or redis_server.url, node_id=node_id)
        started.append(gw)
        return await gw.start(wait_ready=wait_ready)

    yield make
    for gw in started:
        await gw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def backend_for(fake: FakeBackend, name: str | None = None, type: str = "vllm", **extra: Any) -> dict[str, Any]:
    """A backend config entry pointing at a running fake."""
    models = extra.pop("models", list(fake.options.models))
    return {"name": name or fake.options.name, "url": fake.url, "type": type, "models": models, **extra}
