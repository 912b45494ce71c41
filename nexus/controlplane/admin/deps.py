"""Dependencies of the admin routers: settings, the Redis client, and bearer-token auth.

The token comparison is constant-time (`hmac.compare_digest`) over the UTF-8 bytes, so a caller learns
nothing from response timing; a missing or wrong token is 401 with a WWW-Authenticate header.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from nexus.core.config import NexusSettings

__all__ = ["Authorized", "RedisDep", "SettingsDep"]

_bearer = HTTPBearer(auto_error=False, description="NEXUS_ADMIN_TOKEN")


def _settings(request: Request) -> NexusSettings:
    return request.app.state.settings


def _redis(request: Request) -> Redis:
    return request.app.state.redis


def _authorize(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    expected: bytes = request.app.state.admin_token
    given = credentials.credentials.encode() if credentials is not None else b""
    if not credentials or not hmac.compare_digest(given, expected):
        raise HTTPException(
            status_code=401,
            detail="missing or invalid admin token; send Authorization: Bearer $NEXUS_ADMIN_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )


SettingsDep = Annotated[NexusSettings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
Authorized = Depends(_authorize)
