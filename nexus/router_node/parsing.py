"""Reading one inference request: authenticate, read the bounded body, translate it from the client's
protocol (its front end, nexus/router_node/fronts.py), validate it, parse the routing headers.

The result is immutable (`ParsedRequest`); a 4xx names the bad field or header, never a 500. Validation
itself is the core's (`nexus.core.schemas`, shared with the admin explain route). Every front end is
translated to one of three routed APIs (chat completions, completions, embeddings); `client` keeps the body
as sent, for a backend that speaks the client's own protocol (nexus/router_node/native.py).

A request authenticates through the node's tenant table (nexus/router_node/tenants.py: managed keys, teams and
the static `[server] api_keys`), for every protocol with `Authorization: Bearer <key>` or `x-api-key: <key>`;
the request carries its `Tenant` (key id, team, limits), never the key. Only a body declared
`application/json` is read, so a browser's cross-site form or text/plain post (which needs no CORS
preflight) cannot spend the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from nexus.core.gateway_errors import UnsupportedMediaType
from nexus.core.pipeline import Requirements
from nexus.core.pipeline.requirements import completion_requirements, estimate_text_tokens, extract_requirements
from nexus.core.schemas import (
    RoutingHeaders,
    parse_chat,
    parse_completion,
    parse_embeddings,
    parse_json_object,
    parse_routing_headers,
)
from nexus.core.tenancy import Tenant
from nexus.router_node.asgi import read_body
from nexus.router_node.fronts import CHAT_PATH, COMPLETIONS_PATH, Front
from nexus.router_node.native import protocol_headers
from nexus.router_node.protocol import ClientWatch
from nexus.router_node.tenants import TenantBook, authenticate

__all__ = ["ParsedRequest", "header", "parse_request"]


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    path: str  # the routed API's (CHAT_PATH, COMPLETIONS_PATH or EMBEDDINGS_PATH), whatever the front
    key_id: str | None
    tenant: Tenant | None  # the caller (its key's limits and its team's); None when the gateway needs no keys
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    requirements: Requirements
    routing: RoutingHeaders
    watch: ClientWatch | None  # the connection's watch (nexus/router_node/protocol.py), if served by it
    front: Front  # the client's protocol
    client: dict[str, Any]  # the body as the client sent it (the native path's)
    protocol_headers: dict[str, str]  # the native path's (anthropic-version, anthropic-beta)


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case) in an ASGI scope."""
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


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


def _api_body(path: str, body: dict[str, Any]) -> tuple[str, bool, Requirements]:
    """(model, stream, requirements) of a body of one of the three routed APIs, validated."""
    if path == CHAT_PATH:
        req = parse_chat(body)
        return req.model, req.stream, extract_requirements(body)
    if path == COMPLETIONS_PATH:
        completion = parse_completion(body)
        return completion.model, completion.stream, completion_requirements(body)
    return parse_embeddings(body).model, False, _embedding_requirements(body)


async def parse_request(
    scope: dict[str, Any], receive: Any, front: Front, *, tenants: TenantBook, max_body_bytes: int
) -> ParsedRequest:
    tenant = authenticate(tenants, scope["headers"])
    require_json(scope)
    raw = await read_body(scope, receive, max_body_bytes)
    client = parse_json_object(raw)
    body = front.translate(client)
    if body is not client:
        raw = orjson.dumps(body)
    path = front.api
    model, stream, requirements = _api_body(path, body)
    return ParsedRequest(
        path=path,
        key_id=tenant.key_id if tenant is not None else None,
        tenant=tenant,
        body=body,
        raw=raw,
        model=model,
        stream=stream,
        requirements=requirements,
        routing=parse_routing_headers(_header_text(scope)),
        watch=scope.get("nexus.client"),
        front=front,
        client=client,
        protocol_headers=protocol_headers(scope["headers"]) if front.native is not None else {},
    )
