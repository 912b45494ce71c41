"""Schemathesis fuzzes every admin operation from the served OpenAPI schema: no input yields a 5xx."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import threading
from collections.abc import Iterator

import pytest
import redis as sync_redis
import requests
import schemathesis
import uvicorn
from fastapi import APIRouter
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from redis.asyncio import Redis
from schemathesis.checks import not_a_server_error

from nexus.controlplane.admin import create_admin_app
from nexus.controlplane.admin import routers as admin_routers
from nexus.controlplane.admin.app import PREFIX
from nexus.core.config import DesiredConfig
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.state import seed_desired
from tests.controlplane.admin.conftest import SECRETS, SEED, TOKEN
from tests.harness import settings_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}

# The import endpoint takes a TOML document: fuzz it as arbitrary text.
schemathesis.serializer.alias("application/toml", "text/plain")


@pytest.fixture(scope="module")
def admin_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The admin app on its own thread and loop (schemathesis calls it synchronously)."""
    settings = settings_for(SEED, redis={"url": redis_server.url}, secrets=SECRETS)
    server = uvicorn.Server(uvicorn.Config(create_admin_app(settings, token=TOKEN), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="on"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.02)
    assert server.started, "admin app did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def seeded(admin_url: str, redis_server: EmbeddedRedis) -> str:
    """Flush, seed an empty config (the admin API refuses writes to an unseeded store), then add the backends
    through the API itself, so every operation's examples start from one config."""
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()

    async def seed() -> None:
        aclient = Redis.from_url(redis_server.url)
        try:
            await seed_desired(aclient, DesiredConfig())
        finally:
            await aclient.aclose()

    asyncio.run(seed())
    for b in SEED:
        requests.put(f"{admin_url}/admin/v1/backends/{b['name']}", json=b, headers=AUTH, timeout=10).raise_for_status()
    return admin_url


# The schema the server serves, built from the same app factory (no server is needed to build it).
schema = schemathesis.openapi.from_dict(create_admin_app(settings_for(SEED, secrets=SECRETS), token=TOKEN).openapi())


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_admin_input_is_a_server_error(case, seeded):
    case.call_and_validate(base_url=seeded, headers=AUTH, checks=[not_a_server_error], timeout=10)


def test_the_fuzzed_schema_covers_every_mounted_route(admin_url):
    """The fuzzer only reaches what the schema lists: every route the app mounts must be in it (a route left
    out of the schema, `include_in_schema=False` say, would never be fuzzed), and the running server serves
    that same list of operations."""
    # every APIRouter any module of the routers package defines, mounted or not
    routers = [
        value
        for info in pkgutil.iter_modules(admin_routers.__path__)
        for value in vars(importlib.import_module(f"{admin_routers.__name__}.{info.name}")).values()
        if isinstance(value, APIRouter)
    ]
    mounted = {(m, PREFIX + r.path) for rt in routers for r in rt.routes if isinstance(r, APIRoute)
               for m in r.methods - {"HEAD"}}
    fuzzed = {(m.upper(), p) for p, ops in schema.raw_schema["paths"].items() for m in ops}
    assert mounted and mounted == fuzzed, mounted ^ fuzzed
    served = requests.get(f"{admin_url}/admin/v1/openapi.json", timeout=10).json()
    assert {(m.upper(), p) for p, ops in served["paths"].items() for m in ops} == fuzzed
    assert served["openapi"].startswith("3.")
