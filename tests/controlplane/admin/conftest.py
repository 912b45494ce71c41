"""An admin API served over real HTTP on loopback, on the session Redis (flushed per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from redis.asyncio import Redis

from nexus.controlplane.admin import create_admin_app
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.state import seed_desired
from tests.harness import AppServer, settings_for

TOKEN = "t0k3n-for-tests-0123456789"
SEED = [
    {"name": "local", "url": "http://127.0.0.1:9/local", "type": "vllm", "models": ["m"]},
    {"name": "cloud", "url": "http://127.0.0.1:9/cloud", "type": "openai", "secret": "TEST_KEY",
     "models": ["m", "gpt-4o"]},
]
# a team and a (TOML-declared, sha256) key exist from the start, so every keys/teams route has something to act on
SEED_TEAM = "ml"
SEED_KEY = "key_0000000000aa"
TENANTS = {
    "teams": [{"name": SEED_TEAM}],
    "keys": [{"id": SEED_KEY, "name": "seeded", "team": SEED_TEAM, "digest": "sha256:" + "ab" * 32}],
}
# the operator's declaration: the key may only go to loopback
SECRETS = {"TEST_KEY": {"env": "TEST_KEY", "hosts": ["127.0.0.1"]}}


@dataclass
class Admin:
    url: str
    http: aiohttp.ClientSession
    redis: Redis

    async def call(self, method: str, path: str, *, json=None, data=None, token: str | None = TOKEN,
                   headers: dict | None = None) -> tuple[int, object]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, f"{self.url}/admin/v1{path}", json=json, data=data, headers=h) as r:
            body = await r.read()
            ctype = r.headers.get("Content-Type", "")
            if "json" in ctype:
                import orjson

                return r.status, orjson.loads(body)
            return r.status, body.decode()


@pytest.fixture
async def admin(redis_server: EmbeddedRedis, redis: Redis) -> AsyncIterator[Admin]:
    settings = settings_for(SEED, redis={"url": redis_server.url}, secrets=SECRETS, **TENANTS)
    await seed_desired(redis, settings.desired())
    server = await AppServer(create_admin_app(settings, token=TOKEN)).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Admin(server.url, http, redis)
    finally:
        await server.stop()
