"""The gateway process: build a gateway app on one Redis client and run it under uvicorn with the drain order a
load balancer needs (`nexus router`). `nexus serve` (nexus/serve.py) composes the same app with the admin API,
the worker loops and an embedded Redis through the startup/shutdown hooks and the `admin` factory here, so one
process owns and stops everything it started.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn
from redis.asyncio import Redis
from starlette.types import ASGIApp

from nexus.core.config import NexusSettings, ServerConfig
from nexus.core.redis_conn import connect
from nexus.router_node.app import GatewayApp
from nexus.router_node.node import RouterNode, default_node_id
from nexus.router_node.protocol import protocol_for

__all__ = ["AdminFactory", "build_gateway", "run_gateway", "uvicorn_config"]

log = logging.getLogger("nexus")
Hook = Callable[[], Awaitable[None]]
# builds the ASGI app mounted at /admin from the gateway's own Redis client (the composition root supplies it)
AdminFactory = Callable[[Redis], ASGIApp]


def uvicorn_config(
    app: GatewayApp, host: str, port: int, server: ServerConfig | None = None, **overrides: Any
) -> uvicorn.Config:
    """How every gateway is served (processes and tests alike): uvloop, httptools with the connection limits
    of `server` (default: the app's node's; nexus/router_node/protocol.py), no WebSocket, no access log."""
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # uvicorn[standard] brings it; keep working without it
        loop = "asyncio"
    server = server or app.node.settings.server
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "lifespan": "on",
        "loop": loop,
        "http": protocol_for(server),
        "ws": "none",
        "timeout_keep_alive": server.keepalive_timeout_seconds,
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 30,
        **overrides,
    }
    return uvicorn.Config(app, **options)


def build_gateway(
    settings: NexusSettings,
    redis_url: str | None = None,
    *,
    node_id: str | None = None,
    startup: list[Hook] | None = None,
    shutdown: list[Hook] | None = None,
    admin: AdminFactory | None = None,
) -> GatewayApp:
    """A gateway app owning one Redis client (to `redis_url`, else `[redis]`: standalone or Sentinel); with
    `admin`, the app it builds is mounted at /admin."""
    node_id = node_id or default_node_id()
    redis = connect(settings.redis.target(redis_url), health_check_interval=10, client_name=f"nexus-router:{node_id}")
    node = RouterNode(settings, redis, node_id=node_id)
    mounted = admin(redis) if admin is not None else None

    async def close_redis() -> None:
        await redis.aclose()

    return GatewayApp(node, admin=mounted, extra_startup=startup, extra_shutdown=[close_redis, *(shutdown or [])])


class _GatewayServer(uvicorn.Server):
    """uvicorn's server with the shutdown order a load balancer needs. On the first SIGTERM/SIGINT the node
    turns unready (/ready answers 503) while the listener stays open and in-flight requests finish, up to the
    app's drain deadline. Once /ready has said 503 for `drain_delay_seconds`, new inference requests get a fast
    503 (`Connection: close`, Retry-After) and the process exits as soon as nothing is in flight; only then
    does uvicorn's own shutdown run (stop accepting, finish connections, the
    lifespan's last telemetry flush), and the process exits 0. Plain uvicorn closed the listener at once (so
    /ready never said 503) and re-raised the signal after its graceful shutdown (exit status -15). A second
    signal is uvicorn's: shut down now."""

    def __init__(self, config: uvicorn.Config, app: GatewayApp) -> None:
        super().__init__(config)
        self._node = app.node
        self._drain_seconds = app.drain_seconds
        # not-ready for at least this long even when idle, so balancers polling /ready notice in time
        self._min_unready = app.node.settings.server.drain_delay_seconds
        self._drain_from: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_from is None and not self.should_exit:
            self._node.draining = True
            self._drain_from = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:  # every 0.1 s in uvicorn's main loop
        start = self._drain_from
        if start is not None and not self.should_exit:
            waited = time.monotonic() - start
            if waited >= self._min_unready:
                # balancers had their time to see /ready 503: take no new work, so in-flight can only fall
                # (under steady traffic it never reached 0 before, and every stop waited the full deadline)
                self._node.accepting = False
            idle = not self._node.active and not self._node.load.total()
            if waited >= self._drain_seconds or (idle and waited >= self._min_unready):
                self.should_exit = True
        return await super().on_tick(counter)


def run_gateway(app: GatewayApp, host: str, port: int, banner: str | None = None) -> None:
    """Run until SIGINT/SIGTERM: readiness off, drain delay, then uvicorn stops accepting, finishes
    requests, and the lifespan stops the node."""
    if banner:

        async def announce() -> None:
            print(banner, flush=True)

        app.add_startup(announce)
    server = _GatewayServer(uvicorn_config(app, host, port), app)
    server.run()
    if not server.started:
        sys.exit(1)
