"""Request validation for the OpenAI-compatible endpoints.

Validation checks what routing and proxying rely on (model, messages and their roles and content
shapes, stream flags, token limits) and lets every other field through untouched: backends accept
vendor extensions and newer OpenAI fields that Nexus need not know. A failure becomes a 400 whose
`param` names the first bad field (`messages[0].role`), never a 500.

The routing headers (`X-Nexus-Strict`, `X-Nexus-Flexible`, `X-Nexus-Priority`, `X-Nexus-Explain`) are
parsed here too, once for the gateway and the admin explain route (docs/http-contract.md lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, ValidationError

from nexus.core.gateway_errors import BadRequest
from nexus.core.globs import MAX_MODEL_NAME_LENGTH
from nexus.core.model import TierMode
from nexus.core.usage import MAX_TOKENS

__all__ = [
    "ChatCompletionCreate",
    "CompletionCreate",
    "EmbeddingCreate",
    "RoutingHeaders",
    "parse_chat",
    "parse_completion",
    "parse_embeddings",
    "parse_json_object",
    "parse_routing_headers",
]

_Open = ConfigDict(extra="allow")


class ContentPart(BaseModel):
    model_config = _Open
    type: str = Field(min_length=1)


class Message(BaseModel):
    model_config = _Open
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = _Open
    include_usage: StrictBool | None = None


# JSON numbers only (a string "0.5" is refused, never forwarded raw); ints are numbers too
Number = Annotated[float, Strict()] | StrictInt
MAX_OUTPUT_TOKENS = MAX_TOKENS  # far above any model's output limit, far below 2**64


class ChatCompletionCreate(BaseModel):
    model_config = _Open
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    n: StrictInt | None = Field(default=None, ge=1, le=128)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, ge=0, le=1)
    presence_penalty: Number | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(default=None, ge=-2, le=2)
    seed: StrictInt | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    tools: list[dict[str, Any]] | None = None


class EmbeddingCreate(BaseModel):
    model_config = _Open
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)
    input: str | list[str] | list[StrictInt] | list[list[StrictInt]]


class CompletionCreate(BaseModel):
    """A legacy text completion (POST /v1/completions), checked as far as routing and billing need."""

    model_config = _Open
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME_LENGTH)
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=0, le=MAX_OUTPUT_TOKENS)
    n: StrictInt | None = Field(default=None, ge=1, le=128)
    logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, ge=0, le=1)


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[ContentPart]", "list[str]", "list[int]", "list[list[int]]", "none", "float",
                      "int"):
            continue  # union branch names, not fields
        else:
            out += f".{part}" if out else str(part)
    return out


def _bad(exc: ValidationError) -> BadRequest:
    # With unions pydantic reports every branch; the deepest location is the one the client meant.
    first = max(exc.errors(), key=lambda e: len(e["loc"]))
    param = _param(tuple(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        msg = "is required"
    return BadRequest(f"{param}: {msg}" if param else msg, param=param or None)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def parse_chat(body: dict[str, Any]) -> ChatCompletionCreate:
    try:
        return ChatCompletionCreate.model_validate(body)
    except ValidationError as exc:
        raise _bad(exc) from None


def parse_completion(body: dict[str, Any]) -> CompletionCreate:
    try:
        return CompletionCreate.model_validate(body)
    except ValidationError as exc:
        raise _bad(exc) from None


def parse_embeddings(body: dict[str, Any]) -> EmbeddingCreate:
    try:
        return EmbeddingCreate.model_validate(body)
    except ValidationError as exc:
        raise _bad(exc) from None


_TRUE = frozenset({"true", "1", "yes", "on"})
PRIORITIES = ("high", "normal")


@dataclass(frozen=True, slots=True)
class RoutingHeaders:
    """What a request's X-Nexus-* headers ask of routing."""

    tier_mode: TierMode | None = None  # None: the policy's (or the default) tier mode
    priority: str = "normal"
    explain: bool = False


def parse_routing_headers(header: Callable[[str], str | None]) -> RoutingHeaders:
    """`header(name)` gives a header's value (lower-case name) or None; 400 naming the header if invalid."""

    def flag(name: str) -> bool:
        value = header(name)
        return value is not None and value.strip().lower() in _TRUE

    tier_mode = TierMode.STRICT if flag("x-nexus-strict") else TierMode.FLEXIBLE if flag("x-nexus-flexible") else None
    priority = (header("x-nexus-priority") or "normal").strip().lower()
    if priority not in PRIORITIES:
        raise BadRequest("X-Nexus-Priority must be 'high' or 'normal'", param="X-Nexus-Priority")
    return RoutingHeaders(tier_mode, priority, flag("x-nexus-explain"))
