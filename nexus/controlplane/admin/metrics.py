"""Prometheus metrics of the admin API: requests by route template, method and status, and their duration.

One registry per app (tests run several in a process). `nexus admin` serves it at `GET /metrics` of the
admin app (no token: counts and timings only, like the gateway's `/metrics` by default); `nexus serve`
adds it to the gateway's `/metrics`. Route templates (`/admin/v1/backends/{name}`), never raw paths, are
the label, so a client cannot grow the series set.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AdminMetrics", "MetricsMiddleware"]


class AdminMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nexus_admin_requests", "Admin API requests by route, method and status", ["route", "method", "status"],
            registry=r,
        )
        self.seconds = Histogram(
            "nexus_admin_request_duration_seconds", "Admin API request duration", ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every HTTP request the admin app answers (streams when their response starts)."""

    def __init__(self, app: ASGIApp, metrics: AdminMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = _template(scope)
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.seconds.labels(route).observe(time.perf_counter() - started)


def _template(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(unmatched)"
