"""ASGI middleware bounding admin request bodies (`LIMITS.admin_body_bytes`): 413 past the limit.

A declared Content-Length over the limit is refused before anything is read; a body that streams past it
is cut off at the limit, so an oversized import never reaches the TOML parser or the validators.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import HTTPException

__all__ = ["BodyLimit"]

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _too_large(limit: int) -> str:
    return f"request body exceeds {limit} bytes; split the change into smaller writes"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                body = orjson.dumps({"detail": _too_large(limit), "errors": [_too_large(limit)]})
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 413, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        received = 0

        async def bounded() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, bounded, send)
