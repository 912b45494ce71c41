"""Process entry points: `nexus router` (one gateway replica) and `nexus serve` (everything on one machine).

`serve` runs the gateway on one port with, when no Redis URL is configured, an embedded redis-server
(AOF under `redis.data_dir`) started before and stopped after it. `--demo` also starts the two fake
backends the demo config routes between. Components added by later parts (worker loops, admin API)
attach through the same startup/shutdown hooks, so one process owns and stops everything it started.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import uvicorn

from controlplane.config import NexusSettings, ServerConfig
from controlplane.embedded_redis import EmbeddedRedis
from controlplane.redis_conn import connect
from router_node.app import GatewayApp
from router_node.node import RouterNode, default_node_id
from router_node.protocol import protocol_for

__all__ = ["DEMO_CONFIG", "build_gateway", "run_gateway", "serve", "uvicorn_config"]

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "controlplane" / "demo" / "nexus.toml"
log = logging.getLogger("nexus")
Hook = Callable[[], Awaitable[None]]


def uvicorn_config(
    app: GatewayApp, host: str, port: int, server: ServerConfig | None = None, **overrides: Any
) -> uvicorn.Config:
    """How every gateway is served (processes and tests alike): uvloop, httptools with the connection limits
    of `server` (default: the app's node's; router_node/protocol.py), no WebSocket, no access log."""
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
    admin_token: str | None = None,
) -> GatewayApp:
    """A gateway app owning one Redis client (to `redis_url`, else `[redis]`: standalone or Sentinel); with
    `admin_token` the admin API is mounted at /admin."""
    node_id = node_id or default_node_id()
    redis = connect(settings.redis.target(redis_url), health_check_interval=10, client_name=f"nexus-router:{node_id}")
    node = RouterNode(settings, redis, node_id=node_id)
    admin = None
    if admin_token is not None:
        from controlplane.admin import create_admin_app

        admin = create_admin_app(settings, redis, token=admin_token, local_demo=True)

    async def close_redis() -> None:
        await redis.aclose()

    return GatewayApp(node, admin=admin, extra_startup=startup, extra_shutdown=[close_redis, *(shutdown or [])])


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


def _demo_hooks(settings: NexusSettings) -> tuple[list[Hook], list[Hook]]:
    from router_node.fake_backend import FakeBackend, FakeBackendOptions

    fakes: list[tuple[FakeBackend, int]] = []
    for b in settings.backends:
        port = urlparse(b.url).port or 80
        fakes.append(
            (FakeBackend(FakeBackendOptions(name=b.name, models=tuple(m.name for m in b.models), latency_ms=20)), port)
        )

    async def start() -> None:
        for fake, port in fakes:
            await fake.start("127.0.0.1", port)

    async def stop() -> None:
        for fake, _ in fakes:
            await fake.stop()

    return [start], [stop]


def _admin_token(settings: NexusSettings, demo: bool) -> tuple[str | None, str]:
    """The token to mount the admin API with (None: not mounted) and a line for the banner."""
    from controlplane.admin import check_admin_token, generate_token
    from controlplane.errors import ConfigError

    try:
        return check_admin_token(settings.admin.token), "admin API at /admin/v1 (token from NEXUS_ADMIN_TOKEN)"
    except ConfigError as exc:
        if demo:
            token = generate_token()
            return token, f"admin API at /admin/v1, demo token: {token}"
        return None, f"admin API disabled: {exc}"


def serve(settings: NexusSettings, *, demo: bool = False) -> None:
    """Gateway, admin API (when a token is set, or a demo) and the worker loops in one process."""
    token, admin_line = _admin_token(settings, demo)
    startup, shutdown = _demo_hooks(settings) if demo else ([], [])
    embedded: EmbeddedRedis | None = None
    url: str | None = None  # None: [redis] as configured (a URL or sentinels)
    if not settings.redis.configured:
        embedded = EmbeddedRedis(settings.redis.data_dir).start()
        url = embedded.url
    worker_handle: list = []

    async def start_worker() -> None:
        from worker.main import ThreadedWorker

        worker_handle.append(await ThreadedWorker(settings, url).start())

    async def stop_worker() -> None:
        for handle in worker_handle:
            await handle.stop()

    startup = [*startup, start_worker]
    shutdown = [stop_worker, *shutdown]
    if embedded is not None:
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which ends the process before any
        # `finally` here runs: stop Redis from the lifespan, after the node's last telemetry flush.
        async def stop_embedded() -> None:
            embedded.stop()

        shutdown = [*shutdown, stop_embedded]
    try:
        app = build_gateway(settings, url, startup=startup, shutdown=shutdown, admin_token=token)
        from worker.metrics import REGISTRY as WORKER_METRICS

        app.node.metrics.include(WORKER_METRICS)  # the in-process worker loops' series on the same /metrics
        host, port = settings.server.host, settings.server.port
        target = settings.redis.target(url).describe()
        where = f"embedded Redis at {target} (data in {settings.redis.data_dir})" if embedded else f"Redis {target}"
        banner = f"Nexus is serving http://{host}:{port}/v1 ({where})\n{admin_line}"
        if demo:
            banner += (
                "\nDemo: two fake backends, local-gpu (restricted zone) and cloud-api (open zone). Try:\n"
                f"  curl -si http://{host}:{port}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
                '    -d \'{"model": "llama3:8b", "messages": [{"role": "user", "content": "Hello"}]}\''
            )
        run_gateway(app, host, port, banner)
    finally:
        if embedded is not None:
            embedded.stop()
