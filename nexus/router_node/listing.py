"""Answers that need no backend: one model (`GET /v1/models/{id}`), Ollama's model list and model details
(`GET /api/tags`, `POST /api/show`, `GET /api/version`) and Anthropic's token count
(`POST /v1/messages/count_tokens`, the gateway's own estimate, as used for routing and budgets).

Model ids may contain `/` (`GET /v1/models/org/model`): everything after `/v1/models/` is the id. A model is
listed when a backend that is not unhealthy serves it (or an alias leads to one), as in `GET /v1/models`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from nexus.core.capabilities import Feature
from nexus.core.gateway_errors import BadRequest, GatewayError, MethodNotAllowed, ModelNotFound
from nexus.core.inbound import anthropic_messages as am
from nexus.core.inbound import ollama
from nexus.core.pipeline.requirements import extract_requirements
from nexus.core.schemas import parse_json_object
from nexus.core.tenancy import Tenant
from nexus.router_node.asgi import read_body, send_json
from nexus.router_node.fronts import ANTHROPIC, CHAT, FRONTS, OLLAMA_CHAT, Front, iso_now
from nexus.router_node.response import send_front_error

if TYPE_CHECKING:
    from nexus.router_node.node import RouterNode

__all__ = ["OLLAMA_VERSION", "ModelListing"]

OLLAMA_VERSION = "0.6.0"  # the Ollama API version these answers follow
_MODEL_PREFIX = "/v1/models/"
_COUNT = "/v1/messages/count_tokens"
_GET = {"/api/tags", "/api/version"}


class ModelListing:
    def __init__(self, node: RouterNode, routable: Callable[[Tenant | None], list[str]]) -> None:
        self._node = node
        self._routable = routable

    def handles(self, path: str) -> bool:
        return path.startswith(_MODEL_PREFIX) or path in (_COUNT, "/api/show") or path in _GET

    def front(self, path: str) -> str:
        return ANTHROPIC.path if path == _COUNT else OLLAMA_CHAT.path if path.startswith("/api/") else CHAT.path

    def requires_key(self, path: str, models_require_key: bool) -> bool:
        return True if path == _COUNT else models_require_key

    async def serve(self, scope: dict[str, Any], receive: Any, send: Any, path: str, method: str,
                    tenant: Tenant | None = None) -> None:
        """Answer `path`; a caller's `tenant` sees only the models it may use."""
        front: Front = FRONTS[self.front(path)]
        want = "GET" if path in _GET or path.startswith(_MODEL_PREFIX) else "POST"
        try:
            if method != want:
                raise MethodNotAllowed(f"{method} {path} is not supported; use {want}")
            body = await self._answer(scope, receive, path, tenant)
        except GatewayError as err:
            await send_front_error(send, front, err)
            return
        await send_json(send, 200, orjson.dumps(body))

    async def _answer(self, scope: dict[str, Any], receive: Any, path: str, tenant: Tenant | None) -> dict[str, Any]:
        snap = self._node.snapshot
        modified = iso_now(snap.built_at if snap is not None else 0.0)
        if path.startswith(_MODEL_PREFIX):
            model = unquote(path[len(_MODEL_PREFIX):])
            self._known(model, tenant)
            return {"id": model, "object": "model", "created": int(snap.built_at) if snap else 0, "owned_by": "nexus"}
        if path == "/api/version":
            return {"version": OLLAMA_VERSION}
        if path == "/api/tags":
            return ollama.tags(self._routable(tenant), modified)
        body = parse_json_object(await read_body(scope, receive, self._node.settings.server.max_body_bytes))
        if path == _COUNT:
            chat = am.to_chat({**body, "max_tokens": 1, "stream": False})
            return {"input_tokens": extract_requirements(chat).input_tokens}
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: must be a non-empty string", param="model")
        self._known(model, tenant)
        return self._show(model, modified)

    def _known(self, model: str, tenant: Tenant | None) -> None:
        if model not in self._routable(tenant):
            raise ModelNotFound(f"model '{model}' not found", param="model")

    def _show(self, model: str, modified: str) -> dict[str, Any]:
        snap = self._node.snapshot
        assert snap is not None  # a routable model implies a snapshot
        resolved = model
        for _ in range(4):
            resolved = snap.aliases.get(resolved, resolved)
        specs = [b.models[resolved] for b in snap.by_model.get(resolved, ())]
        contexts = [s.context_length for s in specs if s.context_length is not None]
        capabilities = ["completion"]
        if any(Feature.TOOLS not in s.lacks for s in specs):
            capabilities.append("tools")
        if any(Feature.VISION not in s.lacks for s in specs):
            capabilities.append("vision")
        return ollama.show(model, min(contexts) if contexts else None, capabilities, modified)
