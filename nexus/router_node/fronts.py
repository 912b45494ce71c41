"""Inbound protocol front ends: one per client protocol, all onto the same pipeline and telemetry.

A `Front` turns the client's body into the API body the gateway routes (`translate`, with the API it goes
to: chat completions, embeddings or legacy completions), and renders what comes back, JSON (`answer`),
stream (`stream`) or error (`error`), in the client's protocol (translations in nexus/core/inbound/).
The OpenAI fronts are identities; their streams only gain `nexus_cost_usd` on a usage chunk the client
asked for. `native` names the backend type that speaks the client's protocol itself: such a backend gets
the client's body as sent (nexus/router_node/native.py) and its answer is not translated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from nexus.core.gateway_errors import GatewayError
from nexus.core.inbound import anthropic_messages as am
from nexus.core.inbound import ollama
from nexus.core.inbound import responses as rs
from nexus.core.inbound.common import ChatEvents, obj, usage_of
from nexus.core.model import BackendType
from nexus.core.usage import RESPONSES_USAGE_KEYS, Usage, openai_usage

__all__ = ["ANTHROPIC", "CHAT", "CHAT_PATH", "COMPLETIONS", "COMPLETIONS_PATH", "EMBEDDINGS", "EMBEDDINGS_PATH",
           "FRONTS", "OLLAMA_CHAT", "OLLAMA_EMBED", "OLLAMA_GENERATE", "RESPONSES", "CostOf", "Front", "RequestInfo",
           "iso_now"]

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
COMPLETIONS_PATH = "/v1/completions"
CostOf = Callable[[Usage], float]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What rendering an answer needs to know of its request."""

    request_id: str
    model: str  # as the client asked
    created: float  # unix time
    client: dict[str, Any]  # the body the client sent


def iso_now(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _message(payload: bytes) -> str:
    """The message of an OpenAI error envelope (what the upstream layer produces for every failure)."""
    try:
        err = obj(obj(orjson.loads(payload)).get("error"))
    except orjson.JSONDecodeError:
        err = {}
    message = err.get("message")
    return message if isinstance(message, str) and message else "upstream error"


def _chat(payload: bytes) -> dict[str, Any]:
    try:
        return dict(obj(orjson.loads(payload)))
    except orjson.JSONDecodeError:
        return {}


class Front:
    """The OpenAI protocol itself: bodies pass as sent."""

    path = CHAT_PATH
    api = CHAT_PATH
    native: BackendType | None = None
    stream_type = b"text/event-stream"
    stream_comments = True  # SSE may carry `: comment` lines (the explain document)

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return body

    def error(self, err: GatewayError) -> bytes:
        return err.body()

    def error_headers(self, err: GatewayError) -> dict[str, str]:
        # the SDKs retry 429/5xx unless told not to: a rejection that waiting cannot fix says so
        return {"x-should-retry": "false"} if err.status == 503 and "Retry-After" not in err.headers else {}

    def answer(self, info: RequestInfo, status: int, payload: bytes, native: bool) -> bytes:
        return payload

    def stream(self, info: RequestInfo, cost_of: CostOf, native: bool) -> Any:
        return _UsageCost(cost_of, bool(obj(info.client.get("stream_options")).get("include_usage")))


class _UsageCost:
    """Chat/completions stream pass-through; when the client asked for usage, the usage chunk gains
    `nexus_cost_usd` (only frames with a usage object are re-encoded; every other byte passes as it came)."""

    __slots__ = ("_cost_of", "_usage_asked")

    def __init__(self, cost_of: CostOf, usage_asked: bool) -> None:
        self._cost_of, self._usage_asked = cost_of, usage_asked

    def feed(self, chunk: bytes) -> bytes:
        if not self._usage_asked or b'"usage"' not in chunk:
            return chunk
        frames = chunk.split(b"\n\n")
        for i, frame in enumerate(frames):
            if frame.startswith(b"data: {") and b'"usage"' in frame:
                events = ChatEvents().feed(frame + b"\n\n")
                event = events[0] if events else None
                if isinstance(event, dict) and (usage := usage_of(event)) is not None:
                    event["nexus_cost_usd"] = round(self._cost_of(usage), 10)
                    frames[i] = b"data: " + orjson.dumps(event)
        return b"\n\n".join(frames)

    def fail(self, message: str) -> bytes:
        event = {"error": {"message": message, "type": "upstream_error", "param": None,
                           "code": "upstream_stream_error"}}
        return b"data: " + orjson.dumps(event) + b"\n\n"


class _Embeddings(Front):
    path = api = EMBEDDINGS_PATH


class _Completions(Front):
    path = api = COMPLETIONS_PATH


class _Anthropic(Front):
    path = "/v1/messages"
    native = BackendType.ANTHROPIC

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return am.to_chat(body)

    def error(self, err: GatewayError) -> bytes:
        return am.error_body(err.status, err.message)

    def answer(self, info: RequestInfo, status: int, payload: bytes, native: bool) -> bytes:
        if status != 200:
            return am.error_body(status, _message(payload))
        if native:
            return payload
        chat = _chat(payload)
        return orjson.dumps(am.from_chat(chat, chat.get("model") or info.model, f"msg_{info.request_id}"))

    def stream(self, info: RequestInfo, cost_of: CostOf, native: bool) -> Any:
        if native:
            return _NativeCost(cost_of)
        return am.MessagesStream(info.model, f"msg_{info.request_id}", cost_of)


def _rewrite(chunk: bytes, heads: tuple[bytes, ...], change: Callable[[bytes, dict[str, Any]], bool]) -> bytes:
    """`chunk` (whole `event:` + `data:` frames) with each frame whose event line is one of `heads` passed to
    `change(head, event)`; a frame it changed (returns True) is re-encoded, every other byte stays as it came."""
    frames = chunk.split(b"\n\n")
    for i, frame in enumerate(frames):
        head, _, data = frame.partition(b"\ndata: ")
        if head in heads and change(head, event := _chat(data)):
            frames[i] = head + b"\ndata: " + orjson.dumps(event)
    return b"\n\n".join(frames)


class _NativeCost:
    """An Anthropic stream passed through: `nexus_cost_usd` goes on message_delta, from the usage so far."""

    __slots__ = ("_cost_of", "_usage")
    _HEADS = (b"event: message_start", b"event: message_delta")

    def __init__(self, cost_of: CostOf) -> None:
        self._cost_of, self._usage = cost_of, {}

    def feed(self, chunk: bytes) -> bytes:
        if b"message_start" not in chunk and b"message_delta" not in chunk:
            return chunk
        return _rewrite(chunk, self._HEADS, self._change)

    def _change(self, head: bytes, event: dict[str, Any]) -> bool:
        start = head.endswith(b"start")
        usage = obj(obj(event.get("message")).get("usage") if start else event.get("usage"))
        self._usage.update({k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)})
        if start:
            return False
        prompt = sum(self._usage.get(k, 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                                     "cache_read_input_tokens"))
        event["nexus_cost_usd"] = round(self._cost_of(Usage(prompt, self._usage.get("output_tokens", 0))), 10)
        return True

    def fail(self, message: str) -> bytes:
        return am.MessagesStream("", "").fail(message)


class _Responses(Front):
    path = "/v1/responses"
    native = BackendType.OPENAI

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return rs.to_chat(body)

    def answer(self, info: RequestInfo, status: int, payload: bytes, native: bool) -> bytes:
        if status != 200 or native:
            return payload  # the OpenAI error envelope is the Responses API's too
        chat = _chat(payload)
        return orjson.dumps(rs.from_chat(chat, chat.get("model") or info.model, f"resp_{info.request_id}",
                                         int(info.created), info.client))

    def stream(self, info: RequestInfo, cost_of: CostOf, native: bool) -> Any:
        if native:
            return _NativeResponsesCost(cost_of)
        return rs.ResponsesStream(info.model, f"resp_{info.request_id}", int(info.created), info.client, cost_of)


class _NativeResponsesCost:
    """A Responses stream passed through: the final event's response gains `nexus_cost_usd`."""

    __slots__ = ("_cost_of",)
    _HEADS = (b"event: response.completed", b"event: response.incomplete")

    def __init__(self, cost_of: CostOf) -> None:
        self._cost_of = cost_of

    def feed(self, chunk: bytes) -> bytes:
        if b"event: response.completed" not in chunk and b"event: response.incomplete" not in chunk:
            return chunk
        return _rewrite(chunk, self._HEADS, self._change)

    def _change(self, head: bytes, event: dict[str, Any]) -> bool:
        response = event.get("response")
        usage, _ = openai_usage(response.get("usage") if isinstance(response, dict) else None, RESPONSES_USAGE_KEYS)
        if not isinstance(response, dict) or usage is None:
            return False
        response["nexus_cost_usd"] = round(self._cost_of(usage), 10)
        return True

    def fail(self, message: str) -> bytes:
        event = {"type": "error", "code": "upstream_stream_error", "message": message, "sequence_number": 0}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


class _Ollama(Front):
    stream_type = b"application/x-ndjson"
    stream_comments = False
    generate = False

    def error(self, err: GatewayError) -> bytes:
        return ollama.error_body(err.message)

    def answer(self, info: RequestInfo, status: int, payload: bytes, native: bool) -> bytes:
        if status != 200:
            return ollama.error_body(_message(payload))
        chat = _chat(payload)
        return orjson.dumps(ollama.from_chat(chat, info.model, iso_now(info.created), self.generate))

    def stream(self, info: RequestInfo, cost_of: CostOf, native: bool) -> Any:
        return ollama.OllamaStream(info.model, iso_now(info.created), self.generate, cost_of)


class _OllamaChat(_Ollama):
    path = "/api/chat"

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return ollama.chat_to_chat(body)


class _OllamaGenerate(_Ollama):
    path = "/api/generate"
    generate = True

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return ollama.generate_to_chat(body)


class _OllamaEmbed(_Ollama):
    path = "/api/embed"
    api = EMBEDDINGS_PATH

    def translate(self, body: dict[str, Any]) -> dict[str, Any]:
        return ollama.embed_to_embeddings(body)

    def answer(self, info: RequestInfo, status: int, payload: bytes, native: bool) -> bytes:
        if status != 200:
            return ollama.error_body(_message(payload))
        return orjson.dumps(ollama.from_embeddings(_chat(payload), info.model))


CHAT, EMBEDDINGS, COMPLETIONS = Front(), _Embeddings(), _Completions()
ANTHROPIC, RESPONSES = _Anthropic(), _Responses()
OLLAMA_CHAT, OLLAMA_GENERATE, OLLAMA_EMBED = _OllamaChat(), _OllamaGenerate(), _OllamaEmbed()
FRONTS: dict[str, Front] = {f.path: f for f in (CHAT, EMBEDDINGS, COMPLETIONS, ANTHROPIC, RESPONSES, OLLAMA_CHAT,
                                                 OLLAMA_GENERATE, OLLAMA_EMBED)}
