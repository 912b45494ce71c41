"""`nexus serve`: everything on one machine in one process (the composition root of a single-node Nexus).

The gateway runs on one port with the admin API mounted at /admin (when a token is set, or a demo), the worker
loops on their own thread, and, when no Redis URL is configured, an embedded redis-server (AOF under
`redis.data_dir`) started before and stopped after it. `--demo` also starts the two fake backends the demo config
routes between. Every part attaches through the gateway's startup/shutdown hooks, so one process owns and stops
everything it started.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from redis.asyncio import Redis
from starlette.types import ASGIApp

from nexus.controlplane.admin import check_admin_token, create_admin_app, generate_token
from nexus.core.config import NexusSettings
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.errors import ConfigError
from nexus.router_node.server import Hook, build_gateway, run_gateway

__all__ = ["DEMO_CONFIG", "serve"]

DEMO_CONFIG = Path(__file__).resolve().parent / "demo" / "nexus.toml"


def _demo_hooks(settings: NexusSettings) -> tuple[list[Hook], list[Hook]]:
    from nexus.tools.fake_backend import FakeBackend, FakeBackendOptions  # only a demo needs it

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
    try:
        return check_admin_token(settings.admin.token), "admin API at /admin/v1 (token from NEXUS_ADMIN_TOKEN)"
    except ConfigError as exc:
        if demo:
            token = generate_token()
            return token, f"admin API at /admin/v1, demo token: {token}"
        return None, f"admin API disabled: {exc}"


def _admin_factory(settings: NexusSettings, token: str | None, built: list):
    if token is None:
        return None

    def build(redis: Redis) -> ASGIApp:
        app = create_admin_app(settings, redis, token=token, local_demo=True)
        built.append(app)
        return app

    return build


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
        from nexus.worker.main import ThreadedWorker

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
        admins: list = []
        app = build_gateway(
            settings, url, startup=startup, shutdown=shutdown, admin=_admin_factory(settings, token, admins)
        )
        from nexus.worker.metrics import REGISTRY as WORKER_METRICS

        app.node.metrics.include(WORKER_METRICS)  # the in-process worker loops' series on the same /metrics
        for admin in admins:
            app.node.metrics.include(admin.state.metrics.registry)
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
