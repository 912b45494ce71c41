"""Reading one inference request: authenticate, read the bounded body, validate it, parse the routing headers.

The result is immutable (`ParsedRequest`); a 4xx names the bad field or header, never a 500. Validation
itself is the core's (`nexus.core.schemas`, shared with the admin explain route).

A request authenticates with `Authorization: Bearer <key>` when client keys are configured
(`server.api_keys` as sha256 digests, or `server.api_keys_env`); the key's id is the first 12 hex chars of
its sha256, never the key. Only a body declared `application/json` is read, so a browser's cross-site form
or text/plain post (which needs no CORS preflight) cannot spend the budget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from nexus.core.gateway_errors import Unauthorized, UnsupportedMediaType
from nexus.core.pipeline import Requirements
from nexus.core.pipeline.requirements import estimate_text_tokens, extract_requirements
from nexus.core.schemas import RoutingHeaders, parse_chat, parse_embeddings, parse_json_object, parse_routing_headers
from nexus.router_node.asgi import read_body
from nexus.router_node.protocol import ClientWatch

__all__ = ["CHAT_PATH", "EMBEDDINGS_PATH", "ParsedRequest", "authenticate", "header", "parse_request"]

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    path: str
    key_id: str | None
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    requirements: Requirements
    routing: RoutingHeaders
    watch: ClientWatch | None  # the connection's watch (nexus/router_node/protocol.py), if served by it


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


def _embedding_requirements(body: dict[str, Any]) -> Requirements:
    data = body.get("input")
    texts = (
        [data] if isinstance(data, str) else [x for x in data if isinstance(x, str)] if isinstance(data, list) else []
    )
    tokens = sum(estimate_text_tokens(t) for t in texts) or (len(data) if isinstance(data, list) else 0)
    return Requirements(input_tokens=tokens, max_output_tokens=0)


def _header_text(scope: dict[str, Any]) -> Any:
    def get(name: str) -> str | None:
        value = header(scope, name.encode())
        return value.decode("latin-1") if value is not None else None

    return get


async def parse_request(
    scope: dict[str, Any], receive: Any, path: str, *, key_digests: Set[str], max_body_bytes: int
) -> ParsedRequest:
    key_id = authenticate(key_digests, scope)
    require_json(scope)
    raw = await read_body(scope, receive, max_body_bytes)
    body = parse_json_object(raw)
    if path == CHAT_PATH:
        req = parse_chat(body)
        model, stream, requirements = req.model, req.stream, extract_requirements(body)
    else:
        model, stream, requirements = parse_embeddings(body).model, False, _embedding_requirements(body)
    return ParsedRequest(
        path=path,
        key_id=key_id,
        body=body,
        raw=raw,
        model=model,
        stream=stream,
        requirements=requirements,
        routing=parse_routing_headers(_header_text(scope)),
        watch=scope.get("nexus.client"),
    )
