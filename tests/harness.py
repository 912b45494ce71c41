"""Running real Nexus parts inside a test: fake backends and gateways over real HTTP on 127.0.0.1.

`GatewayHarness.start` serves a `GatewayApp` with uvicorn in the test's own event loop on a free port
and waits for readiness; `stop` shuts it down through the same lifespan production uses. Every part a
test starts through these factories is stopped by the fixture that made it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from redis.asyncio import Redis

from nexus.core.config import NexusSettings, load_settings
from nexus.core.telemetry_store import TelemetryRecord
from nexus.router_node.app import GatewayApp
from nexus.router_node.node import RouterNode
from nexus.router_node.server import uvicorn_config
from nexus.tools.fake_backend import FakeBackend, FakeBackendOptions

__all__ = ["AppServer", "GatewayHarness", "eventually", "fake_backend", "settings_for"]

FAST = {"redis": {"snapshot_poll_seconds": 0.2}, "telemetry": {"flush_interval_ms": 20}}


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `check` (sync or async) until it returns a truthy value; fail with its last value (and `what` was
    awaited) after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


async def fake_backend(name: str, models: tuple[str, ...] = ("m",), **options: Any) -> FakeBackend:
    fake = FakeBackend(FakeBackendOptions(name=name, models=models, **options))
    await fake.start()
    return fake


def settings_for(backends: list[Mapping[str, Any]], **sections: Any) -> NexusSettings:
    """Settings for a test: the given backends and sections, fast refresh and flush intervals."""
    data: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in FAST.items()}
    for key, value in sections.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data["backends"] = list(backends)
    return load_settings(overrides=data, environ={"TEST_KEY": "sk-test-secret"})


class AppServer:
    """Any ASGI app served by uvicorn in the current event loop on a free loopback port."""

    def __init__(self, app: Any, config: uvicorn.Config | None = None) -> None:
        self._server = uvicorn.Server(
            config
            or uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False,
                              http="httptools", timeout_graceful_shutdown=5)
        )
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task: asyncio.Task | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> AppServer:
        self._task = asyncio.create_task(self._server.serve())
        await eventually(lambda: self._server.started or self._task.done(), timeout=15)
        if self._task.done():
            self._task.result()
            raise RuntimeError("server did not start")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await self._task
            self._task = None


class GatewayHarness:
    def __init__(self, settings: NexusSettings, redis_url: str, *, node_id: str | None = None) -> None:
        self.redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=1)
        self.node = RouterNode(settings, self.redis, node_id=node_id, rng_seed=0)
        self.app = GatewayApp(self.node, drain_seconds=2.0)
        # every telemetry record the node made, in order: what its flushes sum into batches (Redis keeps sums)
        self.records: list[TelemetryRecord] = []
        self.node.telemetry.record = self._tap(self.node.telemetry.record)
        # served exactly as `nexus router` serves it (connection limits included), on a free port
        self.server = AppServer(self.app, uvicorn_config(self.app, "127.0.0.1", 0, timeout_graceful_shutdown=5))

    def _tap(self, record: Callable[[TelemetryRecord], None]) -> Callable[[TelemetryRecord], None]:
        def tapped(rec: TelemetryRecord) -> None:
            self.records.append(rec)
            record(rec)

        return tapped

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, *, wait_ready: bool = True) -> GatewayHarness:
        await self.server.start()
        if wait_ready:
            await eventually(lambda: self.node.ready, timeout=15)
        return self

    async def stop(self) -> None:
        await self.server.stop()
        await self.redis.aclose()
