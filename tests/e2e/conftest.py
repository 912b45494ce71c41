"""End-to-end fixtures: a local cluster of real processes (routers, admin, fake backends, Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from nexus.tools.devcluster import LocalCluster

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def cluster(tmp_path) -> AsyncIterator[Callable[..., Any]]:
    started: list[LocalCluster] = []

    async def make(**kw: Any) -> LocalCluster:
        c = LocalCluster(tmp_path / f"cluster{len(started)}", env={"TEST_KEY": "sk-e2e-very-secret"}, **kw)
        started.append(c)
        await asyncio.to_thread(c.start)
        return c

    yield make
    for c in started:
        await asyncio.to_thread(c.stop)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def chat(http: aiohttp.ClientSession, url: str, body: dict | None = None, **headers: str) -> tuple[int, Any, Any]:
    async with http.post(f"{url}/v1/chat/completions", json=body or CHAT, headers=headers) as r:
        return r.status, r.headers, await r.json(content_type=None)
