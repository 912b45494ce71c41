"""The router node's ASGI application.

A plain dispatcher over the inference endpoints of every client protocol (nexus/router_node/fronts.py), the
model lists and the node's operational endpoints; `/admin` is handed to a mounted admin app when one is given
(`nexus serve`). The ASGI lifespan owns the node: start on startup, drain and stop on shutdown.

    POST /v1/chat/completions   POST /v1/embeddings   POST /v1/completions   GET /v1/models[/{id}]
    POST /v1/messages   POST /v1/messages/count_tokens   POST /v1/responses
    POST /api/chat   POST /api/generate   POST /api/embed   GET /api/tags   POST /api/show   GET /api/version
    GET /v1/stats (cluster-wide)   GET /health (liveness, with details)   GET /ready (snapshot loaded, not draining)
    GET /metrics
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from nexus.core.aliases import follow as follow_alias
from nexus.core.errors import StateUnavailable
from nexus.core.gateway_errors import MethodNotAllowed, NotFound, Overloaded, Unauthorized, Unavailable
from nexus.core.model import HealthState
from nexus.core.tenancy import Tenant
from nexus.router_node.asgi import send_error, send_json
from nexus.router_node.fronts import FRONTS
from nexus.router_node.handler import handle_inference
from nexus.router_node.listing import ModelListing
from nexus.router_node.metrics import CONTENT_TYPE_LATEST
from nexus.router_node.node import RouterNode
from nexus.router_node.response import send_front_error
from nexus.router_node.stats import StatsCache, health_details
from nexus.router_node.tenants import authenticate, presented_key

__all__ = ["GatewayApp"]

log = logging.getLogger("nexus.router")
_ADMIN_ROOTS = ("/admin", "/dashboard")  # paths handed to the mounted admin app (its API and the dashboard)
_ADMIN_PREFIXES = tuple(f"{root}/" for root in _ADMIN_ROOTS)
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class GatewayApp:
    def __init__(
        self,
        node: RouterNode,
        *,
        admin: ASGIApp | None = None,
        extra_startup: list[Callable[[], Awaitable[None]]] | None = None,
        extra_shutdown: list[Callable[[], Awaitable[None]]] | None = None,
        drain_seconds: float = 10.0,
    ) -> None:
        self.node = node
        self.admin = admin
        self._startup = extra_startup or []
        self._shutdown = extra_shutdown or []
        self._drain = drain_seconds
        self._server = node.settings.server
        self._max_active = self._server.max_concurrent_requests
        self._listing = ModelListing(node, self._routable)
        self._stats = StatsCache(node.redis)

    @property
    def drain_seconds(self) -> float:
        return self._drain

    def add_startup(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._startup.append(hook)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.node.start()
                    for hook in self._startup:
                        await hook()
                except Exception as exc:  # report to the server instead of dying silently
                    log.exception("router node failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # the node first (drain, last telemetry flush), then what it used (clients, Redis itself)
                await self.node.stop(self._drain)
                for hook in self._shutdown:
                    try:
                        await hook()
                    except Exception:
                        log.exception("shutdown hook failed")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path in FRONTS:
            await self._inference(scope, receive, send, path, method)
        elif path == "/v1/models" and method == "GET":
            ok, tenant = await self._caller(self._server.models_require_key, scope, send)
            if ok:
                await send_json(send, 200, self._models(tenant))
        elif self._listing.handles(path):
            required = self._listing.requires_key(path, self._server.models_require_key)
            ok, tenant = await self._caller(required, scope, send, FRONTS[self._listing.front(path)])
            if ok:
                await self._listing.serve(scope, receive, send, path, method, tenant)
        elif path == "/health":
            # liveness: always 200 while serving; the details come from memory, never from Redis
            await send_json(send, 200, orjson.dumps(health_details(self.node.snapshot, self.node.started_at,
                                                                   time.time())))
        elif path == "/v1/stats" and method == "GET":
            if not self._server.metrics_require_key or (await self._caller(True, scope, send))[0]:
                try:
                    body = await self._stats.get(self.node.snapshot, self.node.started_at, time.time())
                except StateUnavailable as exc:
                    await send_error(send, Unavailable(f"shared state unavailable: {exc}",
                                                       headers={"Retry-After": "1"}))
                    return
                await send_json(send, 200, orjson.dumps(body))
        elif path == "/ready":
            await self._ready(send)
        elif path == "/metrics":
            if self._server.metrics_require_key and not (await self._caller(True, scope, send))[0]:
                return
            body = self.node.render_metrics()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif self.admin is not None and (path in _ADMIN_ROOTS or path.startswith(_ADMIN_PREFIXES)):
            await self.admin(scope, receive, send)
        else:
            await send_error(send, NotFound(f"no route for {method} {path}"))

    async def _inference(self, scope: dict[str, Any], receive: Any, send: Any, path: str, method: str) -> None:
        front = FRONTS[path]
        if method != "POST":
            await send_front_error(send, front, MethodNotAllowed(f"{method} {path} is not supported; use POST"))
            return
        node = self.node
        if not node.accepting:
            # shutting down and past the drain delay: new work goes to another replica, at once
            await send_front_error(send, front, Unavailable(
                "this replica is shutting down; retry (another replica will answer)",
                headers={"Retry-After": "1", "Connection": "close"},
            ))
            return
        if node.active >= self._max_active:
            await send_front_error(send, front, Overloaded(
                f"this replica is serving server.max_concurrent_requests ({self._max_active}) requests; "
                "retry shortly", headers={"Retry-After": "1"}))
            return
        node.active += 1
        try:
            await handle_inference(node, scope, receive, send, path)
        finally:
            node.active -= 1

    async def _caller(self, required: bool, scope: dict[str, Any], send: Any,
                      front: Any = None) -> tuple[bool, Tenant | None]:
        """(False, None) with a 401 sent when client keys are set, this endpoint requires one, and it is missing
        or bad; else (True, the caller's tenant). A key that is sent is checked whether or not one is required
        (its model list is what it may see)."""
        try:
            if required or presented_key(scope["headers"]) is not None:
                return True, authenticate(self.node.tenants, scope["headers"])
        except Unauthorized as err:
            if front is not None:
                await send_front_error(send, front, err)
            else:
                await send_error(send, err)
            return False, None
        return True, None

    async def _ready(self, send: Any) -> None:
        node = self.node
        snap = node.snapshot
        body = {
            "ready": node.ready,
            "node": node.node_id,
            "draining": node.draining,
            "snapshot_version": snap.version if snap else None,
            "snapshot_age_seconds": round(time.time() - snap.built_at, 3) if snap else None,
            "redis_ok": node.telemetry.redis_ok,
        }
        refresher = node.refresher
        if refresher.lost is not None:
            body["state_lost"] = refresher.lost  # still ready: routing on the last good snapshot
        if refresher.failing_version is not None or (snap is None and refresher.last_error):
            # the node serves (or waits) on its last good snapshot; say which state it could not use and why
            body["snapshot_error"] = refresher.last_error
            body["failing_config_version"] = refresher.failing_version
        await send_json(send, 200 if node.ready else 503, orjson.dumps(body))

    def _models(self, tenant: Tenant | None = None) -> bytes:
        snap = self.node.snapshot
        if snap is None:
            return orjson.dumps({"object": "list", "data": []})
        created = int(snap.built_at)
        data = [{"id": name, "object": "model", "created": created, "owned_by": "nexus"}
                for name in self._routable(tenant)]
        return orjson.dumps({"object": "list", "data": data})

    def _routable(self, tenant: Tenant | None = None) -> list[str]:
        """The model names (and aliases) with a backend that is not unhealthy, sorted; of those, only what
        `tenant` may use when there is one."""
        snap = self.node.snapshot
        if snap is None:
            return []
        routable = {
            model
            for model, backends in snap.by_model.items()
            if any(b.health is not HealthState.UNHEALTHY for b in backends)
        }
        names = set(routable)
        for alias in snap.aliases:
            if follow_alias(snap.aliases, alias).target in routable:
                names.add(alias)
        if tenant is not None:  # only what this key may use
            names = {n for n in names if tenant.allows_model(n)}
        return sorted(names)
