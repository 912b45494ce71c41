"""The `nexus` command line: one entry point, one subcommand per process kind or operator task.

Subcommands import their implementation lazily so `nexus --help` stays fast and a router node never
imports the admin API's dependencies it does not run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_CONFIG", "main"]

DEFAULT_CONFIG = "nexus.toml"  # what `nexus serve` reads without --config, in the working directory


def _check_config(ns: argparse.Namespace) -> int:
    from nexus.core.config import load_settings
    from nexus.core.errors import ConfigError

    try:
        settings = load_settings(ns.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    desired = settings.desired()
    print(
        f"{ns.config}: ok ({len(desired.backends)} backends, {len(desired.routing.policies)} policies, "
        f"{len(desired.routing.aliases)} aliases)"
    )
    return 0


def _fake_backend(ns: argparse.Namespace) -> int:
    from nexus.tools.fake_backend import options_from_args, run_forever

    try:
        options = options_from_args(ns)
    except (TypeError, ValueError) as exc:
        print(f"nexus fake-backend: {exc}", file=sys.stderr)
        return 2
    run_forever(options, ns.host, ns.port)
    return 0


def _settings(ns: argparse.Namespace, *, demo: bool = False):  # -> NexusSettings
    from nexus.core.config import load_settings

    overrides: dict = {}
    if getattr(ns, "redis_url", None):
        overrides.setdefault("redis", {}).update(url=ns.redis_url, sentinels=[])
    if getattr(ns, "port", None) is not None:
        overrides.setdefault("server", {})["port"] = ns.port
    if getattr(ns, "host", None):
        overrides.setdefault("server", {})["host"] = ns.host
    if getattr(ns, "data_dir", None):
        overrides.setdefault("redis", {})["data_dir"] = ns.data_dir
    if demo:
        from nexus.serve import DEMO_CONFIG

        settings = load_settings(DEMO_CONFIG, overrides=overrides)
    else:
        settings = load_settings(ns.config, overrides=overrides)
    from nexus.core.logs import configure_logging

    configure_logging(settings.logging)
    knobs = settings.testing.knobs()
    if knobs:
        shown = ", ".join(f"{k} = {v}" for k, v in sorted(knobs.items()))
        print(f"nexus: WARNING: [testing] {shown}: test knobs, never for production (budget periods and clocks "
              "differ from the real calendar; every process of the cluster must carry the same)", file=sys.stderr)
    return settings


def _serve(ns: argparse.Namespace) -> int:
    from nexus.core.errors import ConfigError, NexusError
    from nexus.serve import serve

    if not ns.demo and not ns.config:
        if not Path(DEFAULT_CONFIG).is_file():
            print(f"nexus serve: no ./{DEFAULT_CONFIG}: give --config nexus.toml, run `nexus config init`, or "
                  "--demo for the built-in demo", file=sys.stderr)
            return 2
        ns.config = DEFAULT_CONFIG
    try:
        settings = _settings(ns, demo=ns.demo)
        serve(settings, demo=ns.demo)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except NexusError as exc:
        print(f"nexus serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _shared_settings(ns: argparse.Namespace, command: str):  # -> NexusSettings | exit code
    """Settings for a process of the distributed topology, which needs a shared Redis URL."""
    from nexus.core.errors import ConfigError

    try:
        settings = _settings(ns)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not settings.redis.configured:
        print(f"nexus {command}: needs a shared Redis: give --redis-url, NEXUS_REDIS_URL or [redis] sentinels",
              file=sys.stderr)
        return 2
    return settings


def _router(ns: argparse.Namespace) -> int:
    from nexus.router_node.server import build_gateway, run_gateway

    settings = _shared_settings(ns, "router")
    if isinstance(settings, int):
        return settings
    app = build_gateway(settings, node_id=ns.node_id)
    run_gateway(
        app,
        settings.server.host,
        settings.server.port,
        f"Nexus router node {app.node.node_id} serving http://{settings.server.host}:{settings.server.port}/v1",
    )
    return 0


def _admin(ns: argparse.Namespace) -> int:
    import uvicorn

    from nexus.controlplane.admin import create_admin_app
    from nexus.core.errors import ConfigError

    settings = _shared_settings(ns, "admin")
    if isinstance(settings, int):
        return settings
    try:
        app = create_admin_app(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    port = ns.port if ns.port is not None else settings.admin.port
    print(f"Nexus admin API on http://{settings.server.host}:{port}/admin/v1", flush=True)
    uvicorn.run(app, host=settings.server.host, port=port, log_level="warning", access_log=False)
    return 0


def _dev_cluster(ns: argparse.Namespace) -> int:
    import signal
    import tempfile
    import tomllib

    from nexus.core.errors import NexusError
    from nexus.tools.devcluster import FakeSpec, LocalCluster

    fakes: list[FakeSpec] = []
    config: dict = {}
    if ns.config:
        with open(ns.config, "rb") as fh:
            config = tomllib.load(fh)
    else:  # the demo of `nexus serve --demo`: its config, its backends started as fakes
        from nexus.serve import DEMO_CONFIG
        from nexus.tools.devcluster import demo_cluster

        fakes, config = demo_cluster(DEMO_CONFIG)
    base = ns.dir or tempfile.mkdtemp(prefix="nexus-dev-cluster-")
    cluster = LocalCluster(
        base, routers=ns.routers, workers=ns.workers, fakes=fakes, config=config, nginx=ns.nginx, sentinel=ns.sentinel
    )
    try:
        cluster.start()
    except NexusError as exc:
        print(f"nexus dev-cluster: {exc}", file=sys.stderr)
        return 1
    lines = [f"Nexus dev cluster in {base} (logs there); Ctrl-C stops everything", f"  redis   {cluster.redis_url}"]
    lines += [f"  {p.name:<9} {p.url}" for p in cluster.routers]
    if cluster.admin:
        lines.append(f"  admin     {cluster.admin.url}/admin/v1  (token {cluster.admin_token})")
    if cluster.nginx:
        lines.append(f"  nginx     {cluster.nginx.url}  (in front of the routers)")
    lines += [f"  {p.name:<9} {p.url}" for p in cluster.fakes]
    print("\n".join(lines), flush=True)
    stop = False

    def _stop(*_args: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop:
            signal.pause()
    finally:
        cluster.stop()
    return 0


def _worker(ns: argparse.Namespace) -> int:
    from nexus.worker.main import run_worker

    settings = _shared_settings(ns, "worker")
    if isinstance(settings, int):
        return settings
    run_worker(settings, metrics_port=ns.metrics_port)
    return 0


def _common(p: argparse.ArgumentParser, *, config_required: bool) -> None:
    p.add_argument("--config", "-c", required=config_required, help="path of nexus.toml")
    p.add_argument("--redis-url", help="shared Redis (overrides [redis] url and NEXUS_REDIS_URL)")
    p.add_argument("--host", "-H", help="listen address (overrides [server] host)")
    p.add_argument("--port", "-p", type=int, help="listen port (overrides [server] port)")


def build_parser() -> argparse.ArgumentParser:
    from nexus.cli_tools import add_commands as add_tool_commands
    from nexus.cli_tools import version
    from nexus.tools.fake_backend import add_arguments as add_fake_arguments

    parser = argparse.ArgumentParser(prog="nexus", description="Nexus: LLM inference routing control plane")
    parser.add_argument("--version", "-V", action="version", version=f"nexus {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a nexus.toml and exit")
    check.add_argument("--config", "-c", required=True, help="path of nexus.toml")
    check.set_defaults(func=_check_config)

    serve_p = sub.add_parser("serve", help="run everything in one process (embedded Redis unless a URL is given)")
    _common(serve_p, config_required=False)
    serve_p.add_argument("--demo", action="store_true", help="use the built-in demo config and its fake backends")
    serve_p.add_argument("--data-dir", help="embedded Redis data directory (overrides [redis] data_dir)")
    serve_p.set_defaults(func=_serve)

    router = sub.add_parser("router", help="run one router node (gateway replica) against a shared Redis")
    _common(router, config_required=True)
    router.add_argument("--node-id", help="stable id of this replica (default: hostname + random suffix)")
    router.set_defaults(func=_router)

    worker = sub.add_parser("worker", help="run the reconciliation loops (health, budget, quality, liveness)")
    _common(worker, config_required=True)
    worker.add_argument("--metrics-port", type=int, help="serve Prometheus metrics (GET /metrics) on this port")
    worker.set_defaults(func=_worker)

    admin = sub.add_parser("admin", help="run the admin API alone (needs a shared Redis and NEXUS_ADMIN_TOKEN)")
    _common(admin, config_required=True)
    admin.set_defaults(func=_admin)

    dev = sub.add_parser("dev-cluster", help="run the distributed topology as local processes (for trying it out)")
    dev.add_argument("--config", "-c", help="nexus.toml (default: the demo backends, started as fakes)")
    dev.add_argument("--routers", type=int, default=3)
    dev.add_argument("--workers", type=int, default=2)
    dev.add_argument("--nginx", action="store_true", help="put nginx in front of the routers (needs nginx)")
    dev.add_argument("--sentinel", action="store_true", help="primary, replica and 3 sentinels, not one Redis")
    dev.add_argument("--dir", help="working directory for data and logs (default: a new temp dir)")
    dev.set_defaults(func=_dev_cluster)

    from nexus.cli_admin import add_commands

    add_commands(sub)
    add_tool_commands(sub, parser)

    fake = sub.add_parser("fake-backend", help="run the fake OpenAI-compatible backend (tests, demo, benchmarks)")
    add_fake_arguments(fake)
    fake.set_defaults(func=_fake_backend)

    from nexus.tools import fake_ollama, mdns_announce

    ollama = sub.add_parser("fake-ollama", help="run a stand-in for Ollama's native and OpenAI-compatible API")
    fake_ollama.add_arguments(ollama)
    ollama.set_defaults(func=lambda ns: fake_ollama.run_forever(ns))
    announce = sub.add_parser("mdns-announce", help="announce one service over mDNS until stopped (discovery demos)")
    mdns_announce.add_arguments(announce)
    announce.set_defaults(func=lambda ns: mdns_announce.run_forever(ns))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if getattr(ns, "admin_command", False):
        from nexus.cli_admin import run

        return run(ns)
    return int(ns.func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
