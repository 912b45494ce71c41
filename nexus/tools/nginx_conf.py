"""nginx in front of the router nodes: one template for the local cluster and for docker-compose.

`render(router_ports, listen_port, prefix)` is the standalone config `nexus.tools.devcluster` runs as
`nginx -c FILE -p PREFIX -g 'daemon off;'`, as an ordinary user: the pid file, every temp directory and
both logs live under `prefix`. `render_deploy(routers, admin=..., listen=...)` is
`deploy/nginx/nginx.conf` (regenerate it with `python -m nexus.tools.nginx_conf`, the exact command is
in the file's first line); its runtime paths are relative, so they land under the container's `-p`.
Both are built by `_conf`, the one place for every proxy setting:

- Streaming: neither responses nor request bodies are buffered, so SSE events reach the client as the
  router writes them and bodies stream to the router.
- Retries only where they cannot do work twice: a request moves to the next router on a connect error
  or timeout (nothing was sent), and an idempotent one (GET) also on a 502/503 answer. nginx never
  re-sends a POST it has started to send (it would need `non_idempotent`, deliberately absent, and
  unbuffered bodies cannot be replayed anyway): the first router may already have forwarded the
  completion to a paid backend, and a second send would bill it twice.
- Passive health: `max_fails` failed attempts within `fail_timeout` take a router out for
  `fail_timeout`; the routers' own `/ready` is for orchestrators (compose, Kubernetes).
- Upstream keep-alive: HTTP/1.1 with the Connection header cleared, and idle connections dropped
  before uvicorn's own 5 s keep-alive timeout, so nginx never reuses a socket the router is closing
  (a POST on such a socket would fail after being sent, and could not be retried).
- Limits follow `[server]`: `client_max_body_size` is `server.max_body_bytes`; the read timeout outlasts
  the router's own (`server.request_timeout_seconds` plus `queue.max_wait_seconds`), so a slow request
  ends with the router's error envelope, not nginx's. Errors nginx itself produces (413, 502, 504) use
  the same OpenAI envelope as the routers.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from nexus.core.config import NexusSettings, QueueConfig, ServerConfig, load_settings

__all__ = ["UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS", "main", "render", "render_deploy"]

# Below uvicorn's default timeout_keep_alive (5 s) used by the router and admin servers.
UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS = 4
_MAX_FAILS = 3
_FAIL_TIMEOUT = "10s"
_READ_TIMEOUT_MARGIN_SECONDS = 30
_LOG_FORMAT = (
    "'$remote_addr \"$request\" $status $body_bytes_sent rt=$request_time '\n"
    "                     'upstream=$upstream_addr ust=$upstream_status urt=$upstream_response_time '\n"
    "                     'rid=$upstream_http_x_nexus_request_id'"
)


def _size(n: int) -> str:
    for unit, factor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _error_pages(max_body: str) -> str:
    # Lazy: the envelope belongs to the router node; only rendering needs it.
    from nexus.core.gateway_errors import PayloadTooLarge, UpstreamFailed, UpstreamTimeout

    errors = [
        PayloadTooLarge(f"request body is larger than {max_body} (server.max_body_bytes)"),
        UpstreamFailed("no Nexus router node could take the request; retry shortly"),
        UpstreamTimeout("no answer from the Nexus router node in time"),
    ]
    lines = []
    for err in errors:
        body = err.body().decode()
        if any(c in body for c in "$'\\"):  # nginx would expand `$`, end the string at `'`, unescape `\`
            raise ValueError(f"error body not safe in an nginx string: {body}")
        lines.append(
            f"        error_page {err.status} @nexus_{err.status};\n"
            f"        location @nexus_{err.status} {{\n"
            f"            default_type application/json;\n"
            f"            return {err.status} '{body}\\n';\n"
            f"        }}"
        )
    return "\n".join(lines)


def _conf(
    *,
    header: str,
    routers: Sequence[str],
    admin: str | None,
    listen: str,
    runtime: str,
    error_log: str,
    access_log: str,
    worker_processes: str,
    worker_connections: int,
    settings: NexusSettings | None,
) -> str:
    server = settings.server if settings is not None else ServerConfig()
    queue = settings.queue if settings is not None else QueueConfig()
    max_body = _size(server.max_body_bytes)
    read_timeout = math.ceil(server.request_timeout_seconds + queue.max_wait_seconds) + _READ_TIMEOUT_MARGIN_SECONDS
    if not routers:
        raise ValueError("nginx needs at least one router node upstream")
    servers = "\n".join(f"        server {r} max_fails={_MAX_FAILS} fail_timeout={_FAIL_TIMEOUT};" for r in routers)
    admin_upstream = admin_location = ""
    if admin is not None:
        admin_upstream = f"""
    upstream nexus_admin {{
        server {admin};
        keepalive 4;
        keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS}s;
    }}
"""
        # No retries: a single upstream, and admin writes are not idempotent.
        admin_location = """
        location /admin/ {
            proxy_pass http://nexus_admin;
            proxy_next_upstream off;
        }
"""
    return f"""{header}
worker_processes {worker_processes};
pid {runtime}nginx.pid;
error_log {error_log} warn;

events {{
    worker_connections {worker_connections};
}}

http {{
    server_tokens off;
    log_format nexus {_LOG_FORMAT};
    access_log {access_log} nexus;

    client_body_temp_path {runtime}client_body_temp;
    proxy_temp_path {runtime}proxy_temp;
    fastcgi_temp_path {runtime}fastcgi_temp;
    uwsgi_temp_path {runtime}uwsgi_temp;
    scgi_temp_path {runtime}scgi_temp;

    upstream nexus_routers {{
{servers}
        # idle connections kept per worker: above the client concurrency a replica sees, or nginx opens and
        # closes router connections under load (measured: 23 % of requests at c=128 with 32)
        keepalive 256;
        keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT_SECONDS}s;
    }}
{admin_upstream}
    server {{
        listen {listen};

        # server.max_body_bytes; the router enforces the same limit on chunked bodies.
        client_max_body_size {max_body};

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;

        # SSE: pass every chunk on as it arrives, and stream request bodies instead of spooling them.
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_connect_timeout 5s;
        proxy_send_timeout {read_timeout}s;
        proxy_read_timeout {read_timeout}s;

        # Next router on a connect error/timeout, or a 502/503 answer to an idempotent request. POSTs
        # are only retried when nothing was sent (see nexus/tools/nginx_conf.py). At most one try per
        # router, and no new try 10 s after the first began: a client should not wait on a dead cluster.
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries {len(routers)};
        proxy_next_upstream_timeout 10s;

        # Liveness of the load balancer itself; each router's /health and /ready are for orchestrators.
        location = /health {{
            access_log off;
            default_type application/json;
            return 200 '{{"status":"ok"}}\\n';
        }}
{admin_location}
        location / {{
            proxy_pass http://nexus_routers;
        }}

{_error_pages(max_body)}
    }}
}}
"""


def render(
    router_ports: Sequence[int],
    listen_port: int,
    prefix: Path,
    *,
    admin_port: int | None = None,
    settings: NexusSettings | None = None,
) -> str:
    """A complete nginx.conf for routers on loopback, run by an ordinary user with everything under `prefix`."""
    base = f"{Path(prefix).resolve()}/"
    return _conf(
        header="# nginx in front of the local cluster's router nodes (nexus.tools.nginx_conf.render).",
        routers=[f"127.0.0.1:{p}" for p in router_ports],
        admin=None if admin_port is None else f"127.0.0.1:{admin_port}",
        listen=f"127.0.0.1:{listen_port}",
        runtime=base,
        error_log=f"{base}nginx-error.log",
        access_log=f"{base}nginx-access.log",
        worker_processes="1",
        worker_connections=1024,
        settings=settings,
    )


def render_deploy(
    routers: Sequence[str],
    *,
    admin: str | None,
    listen: str,
    settings: NexusSettings | None = None,
    command: str = "python -m nexus.tools.nginx_conf",
) -> str:
    """`deploy/nginx/nginx.conf`: `routers` and `admin` as host:port; logs to the container's stdout/stderr,
    runtime files relative to the `-p` prefix the container passes (a writable directory)."""
    return _conf(
        header=(
            f"# Generated by `{command}`.\n"
            "# Edit nexus/tools/nginx_conf.py and regenerate; tests/deploy checks this file matches."
        ),
        routers=routers,
        admin=admin,
        listen=listen,
        runtime="",
        error_log="stderr",
        access_log="/dev/stdout",
        worker_processes="auto",
        worker_connections=4096,
        settings=settings,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nexus.tools.nginx_conf", description="print deploy/nginx/nginx.conf for a set of router nodes"
    )
    parser.add_argument("--router", action="append", required=True, metavar="HOST:PORT", help="a router node (repeat)")
    parser.add_argument("--admin", metavar="HOST:PORT", help="the admin API, proxied under /admin/")
    parser.add_argument("--listen", default="8080", help="nginx listen address or port (default 8080)")
    parser.add_argument("--config", help="nexus.toml whose [server] and [queue] limits nginx follows")
    ns = parser.parse_args(argv)
    # The file alone, not this shell's NEXUS_* variables: the output is committed and must be reproducible.
    settings = load_settings(ns.config, environ={}) if ns.config else None
    command = " ".join(
        [
            "python -m nexus.tools.nginx_conf",
            *(f"--router {r}" for r in ns.router),
            *([f"--admin {ns.admin}"] if ns.admin else []),
            f"--listen {ns.listen}",
            *([f"--config {ns.config}"] if ns.config else []),
        ]
    )
    sys.stdout.write(render_deploy(ns.router, admin=ns.admin, listen=ns.listen, settings=settings, command=command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
