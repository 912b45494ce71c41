"""The admin API application: FastAPI under `/admin/v1`, bearer-token auth, one router per resource.

`create_admin_app(settings, redis=None)`: with a Redis client given (as `nexus serve` does, sharing its
pool) the caller owns the client; otherwise the app's lifespan connects to `[redis]` (standalone or Sentinel) and
closes it on shutdown.

Errors: invalid input is 422 naming the field (`ConfigError` lines from the same validation as
nexus.toml, or FastAPI's own body errors); Redis unreachable is 503; nothing an operator sends yields
a 500. Every successful write answers with the new config version, which router nodes apply within a
second (change event + poll).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from redis.asyncio import Redis

from nexus.controlplane import dashboard
from nexus.controlplane.admin.limits import BodyLimit
from nexus.controlplane.admin.metrics import AdminMetrics, MetricsMiddleware
from nexus.controlplane.admin.routers import (
    backends,
    budgets,
    config_io,
    discovery,
    explain,
    keys,
    models,
    observe,
    routing,
    spend,
    teams,
    telemetry,
)
from nexus.controlplane.dashboard.hub import DashboardHub, collect
from nexus.core.config import LIMITS, NexusSettings, format_errors, format_validation_error
from nexus.core.errors import ConfigError, StateError, StateUnavailable
from nexus.core.redis_conn import connect

__all__ = ["PLACEHOLDER_TOKENS", "AdminAuthError", "check_admin_token", "create_admin_app", "generate_token"]

PREFIX = "/admin/v1"
PLACEHOLDER_TOKENS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "placeholder",
        "secret",
        "admin",
        "token",
        "password",
        "nexus",
        "xxx",
        "todo",
        "test",
        "default",
    }
)
MIN_TOKEN_LENGTH = 16


class AdminAuthError(ConfigError):
    """The admin token is missing or a placeholder, and this is not a local demo."""


def generate_token() -> str:
    return secrets.token_urlsafe(24)


def check_admin_token(token: str, *, local_demo: bool = False) -> str:
    """The token to require; refuses empty, placeholder or short tokens unless `local_demo`."""
    weak = not token or token.strip().lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH
    if weak and not local_demo:
        what = "not set" if not token else "a placeholder or shorter than 16 characters"
        raise AdminAuthError(
            f"admin.token (NEXUS_ADMIN_TOKEN) is {what}; set NEXUS_ADMIN_TOKEN to a random secret, e.g. "
            "`export NEXUS_ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(24))')`"
        )
    return token


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": detail.splitlines()}, status_code=status)


def create_admin_app(
    settings: NexusSettings, redis: Redis | None = None, *, token: str | None = None, local_demo: bool = False
) -> FastAPI:
    required = check_admin_token(token if token is not None else settings.admin.token, local_demo=local_demo)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = None
        if app.state.redis is None:
            owned = app.state.redis = connect(settings.redis.target(), client_name="nexus-admin")
        try:
            yield
        finally:
            await app.state.dashboard.close()
            if owned is not None:
                await owned.aclose()

    app = FastAPI(
        title="Nexus admin API",
        version="1",
        description="Change backends, policies, routing and budgets live; read spend, health and nodes; "
        "explain routing decisions. Every write is validated like nexus.toml and reaches every router node "
        "within a second.",
        lifespan=lifespan,
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.redis = redis
    app.state.admin_token = required.encode()
    app.state.dashboard = DashboardHub(
        lambda: collect(app.state.redis, settings), settings.admin.dashboard_interval_seconds
    )

    @app.exception_handler(ConfigError)
    async def _config_error(_request: Request, exc: ConfigError) -> JSONResponse:
        return _problem(422, str(exc))

    @app.exception_handler(ValidationError)
    async def _validation_error(_request: Request, exc: ValidationError) -> JSONResponse:
        return _problem(422, format_validation_error(exc, "body"))

    @app.exception_handler(RequestValidationError)
    async def _request_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer repeats each bad input, which may be a URL with credentials in it
        return _problem(422, format_errors(exc.errors(), "request"))

    @app.exception_handler(StateUnavailable)
    async def _unavailable(_request: Request, exc: StateUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"shared state unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"}
        )

    @app.exception_handler(StateError)
    async def _state_error(_request: Request, exc: StateError) -> JSONResponse:
        return _problem(500, f"shared state is malformed: {exc}")

    for router in (
        backends.router,
        routing.policies_router,
        routing.routing_router,
        budgets.router,
        spend.router,
        observe.health_router,
        observe.nodes_router,
        explain.router,
        config_io.router,
        telemetry.router,
        keys.router,
        teams.router,
        discovery.router,
        models.router,
        models.fleet_router,
    ):
        app.include_router(router, prefix=PREFIX)
    app.include_router(dashboard.router)
    metrics = app.state.metrics = AdminMetrics()

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return metrics.response()

    app.add_middleware(BodyLimit, max_bytes=LIMITS.admin_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
