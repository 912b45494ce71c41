"""Reading one inference request: authenticate, read the bounded body, validate it, parse the routing headers.

The result is immutable (`ParsedRequest`); a 4xx names the bad field or header, never a 500. Validation
itself is the core's (`nexus.core.schemas`, shared with the admin explain route).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from nexus.core.pipeline import Requirements
from nexus.core.pipeline.requirements import estimate_text_tokens, extract_requirements
from nexus.core.schemas import RoutingHeaders, parse_chat, parse_embeddings, parse_json_object, parse_routing_headers
from nexus.router_node.asgi import read_body
from nexus.router_node.auth import authenticate, header, require_json
from nexus.router_node.protocol import ClientWatch

__all__ = ["CHAT_PATH", "EMBEDDINGS_PATH", "ParsedRequest", "parse_request"]

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
