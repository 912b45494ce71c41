"""Minimal raw-ASGI plumbing for the gateway's hot path: read a bounded body, send a response.

The OpenAI endpoints skip a framework on purpose (docs/architecture.md#performance-goals says what a
framework was measured to cost per request); everything here is a thin wrapper over the ASGI messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nexus.core.gateway_errors import ClientDisconnected, GatewayError, PayloadTooLarge

__all__ = ["Headers", "read_body", "send_error", "send_json", "start_response"]

Headers = list[tuple[bytes, bytes]]
_JSON = (b"content-type", b"application/json")


async def read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0
            if declared > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds server.max_body_bytes ({limit})")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # gone, or its body timed out (nexus/router_node/protocol.py)
            raise ClientDisconnected("the client went away before its request body arrived")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds server.max_body_bytes ({limit})")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def start_response(send: Any, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})


async def send_json(send: Any, status: int, body: bytes, headers: Headers | None = None) -> None:
    h = [_JSON, (b"content-length", str(len(body)).encode())]
    if headers:
        h.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": h})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, err: GatewayError, headers: Headers | None = None) -> None:
    h = list(headers or [])
    h.extend((k.lower().encode(), v.encode()) for k, v in err.headers.items())
    await send_json(send, err.status, err.body(), h)
