"""Who may call the inference endpoints, and what they may send.

A request authenticates with `Authorization: Bearer <key>` when client keys are configured
(`server.api_keys` as sha256 digests, or `server.api_keys_env`); the key's id is the first 12 hex chars of
its sha256, never the key. Only a body declared `application/json` is read, so a browser's cross-site form
or text/plain post (which needs no CORS preflight) cannot spend the budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Set
from typing import Any

from nexus.core.gateway_errors import Unauthorized, UnsupportedMediaType

__all__ = ["authenticate", "header", "require_json"]


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case) in an ASGI scope."""
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


def authenticate(digests: Set[str], scope: dict[str, Any]) -> str | None:
    """The key id of the request's bearer key; None when no client keys are configured (`digests` empty)."""
    if not digests:
        return None
    auth = header(scope, b"authorization")
    if not auth or not auth[:7].lower() == b"bearer ":
        raise Unauthorized("missing API key; send Authorization: Bearer <key>")
    digest = hashlib.sha256(auth[7:].strip()).hexdigest()
    if digest not in digests:
        raise Unauthorized("invalid API key")
    return digest[:12]


def require_json(scope: dict[str, Any]) -> None:
    ctype = header(scope, b"content-type")
    if ctype is None or ctype.split(b";", 1)[0].strip().lower() != b"application/json":
        shown = ctype.decode("latin-1")[:60] if ctype else "none"
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (got {shown}); send the request as JSON", param="Content-Type"
        )
