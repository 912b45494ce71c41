"""The native path: a request in a backend's own protocol goes to that backend as sent, not translated twice.

Two pairs: a client speaking Anthropic Messages (`POST /v1/messages`) routed to an Anthropic backend, and
one speaking OpenAI Responses (`POST /v1/responses`) routed to an `openai` backend (the one type known to
serve the Responses API; every other type gets the chat translation). The body goes on as the client sent
it (only `model` rewritten to the routed model, aliases resolved); the answer comes back as the backend
sent it, checked like any other (a 200 must be the API's object, a stream's first event must parse, usage
is validated before it is billed, errors are retryable up to the first byte). The client's
`anthropic-version` and `anthropic-beta` headers go on with an Anthropic request (the body is in that
version's format); credentials are the backend's own, never the client's. The Exchange says `native=True`,
so the inbound front end knows there is nothing to translate.
"""

from __future__ import annotations

from typing import Any

import orjson

from nexus.core.adapters import anthropic_messages as adapter
from nexus.core.adapters.anthropic_stream import NativeStream
from nexus.core.adapters.base import endpoint_url
from nexus.core.adapters.openai import error_envelope
from nexus.core.adapters.sse import MAX_SSE_LINE, SSEError, SSEParser
from nexus.core.gateway_errors import UpstreamError
from nexus.core.model import Backend, BackendType
from nexus.core.usage import RESPONSES_USAGE_KEYS, Usage, openai_usage
from nexus.router_node.upstream import Exchange, Upstream

__all__ = ["PASSED_HEADERS", "ResponsesPassthrough", "open_native", "protocol_headers", "responses_usage"]

_EVENT_STREAM = "text/event-stream"


PASSED_HEADERS = (b"anthropic-version", b"anthropic-beta")
_MAX_HEADER = 512


def protocol_headers(scope_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The client's Anthropic protocol headers to pass on (bounded, printable ASCII only)."""
    out = {}
    for name, value in scope_headers:
        if name in PASSED_HEADERS and len(value) <= _MAX_HEADER and value.isascii() and value.decode().isprintable():
            out[name.decode()] = value.decode()
    return out


async def open_native(upstream: Upstream, backend: Backend, body: dict[str, Any], *, model: str, stream: bool,
                      timeout: float | None, headers: dict[str, str] | None = None) -> Exchange:
    """One attempt in the client's own protocol against a backend that speaks it (see the module docstring)."""
    if backend.type is BackendType.ANTHROPIC:
        return await _open_anthropic(upstream, backend, body, model=model, stream=stream, timeout=timeout,
                                     headers=headers)
    return await _open_responses(upstream, backend, body, model=model, stream=stream, timeout=timeout)


async def _open_anthropic(upstream: Upstream, backend: Backend, body: dict[str, Any], *, model: str, stream: bool,
                          timeout: float | None, headers: dict[str, str] | None = None) -> Exchange:
    """One attempt of a Messages request against an Anthropic backend; UpstreamError when it may be retried."""
    payload = orjson.dumps({**body, "model": model})
    response = await upstream.request(backend, endpoint_url(backend.url, "/v1/messages"), payload, timeout, headers)
    if response.status != 200:
        raw = await upstream._read(backend, response)
        return Exchange(response.status, "application/json",
                        orjson.dumps(adapter.from_anthropic_error(response.status, raw)), False, None, None,
                        native=True)
    if not stream:
        raw = await upstream._read(backend, response)
        message, problem = adapter.check_message(raw)
        if message is None:
            raise UpstreamError(backend.name, problem or "answered 200 with something that is not a message",
                                invalid=True)
        return Exchange(200, "application/json", raw, False, adapter.message_usage(message), None,
                        usage_problem=adapter.usage_problem(message.get("usage")), native=True)
    if not response.content_type.startswith(_EVENT_STREAM):
        await upstream._read(backend, response)
        raise UpstreamError(backend.name, f"answered a stream request with {response.content_type or 'no type'}",
                            invalid=True)
    ex = await upstream.first_events(backend, response, NativeStream(model, 0, False))
    ex.native = True
    return ex


def responses_usage(usage: Any) -> tuple[Usage | None, str | None]:
    """(usage, problem) of a Responses `usage` object (input_tokens / output_tokens)."""
    return openai_usage(usage, RESPONSES_USAGE_KEYS)


async def _open_responses(upstream: Upstream, backend: Backend, body: dict[str, Any], *, model: str, stream: bool,
                          timeout: float | None) -> Exchange:
    payload = orjson.dumps({**body, "model": model})
    response = await upstream.request(backend, endpoint_url(backend.url, "/v1/responses"), payload, timeout)
    if response.status != 200:
        raw = await upstream._read(backend, response)
        return Exchange(response.status, "application/json", error_envelope(response.status, raw, backend.name),
                        False, None, None, native=True)
    if not stream:
        raw = await upstream._read(backend, response)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or obj.get("object") != "response" or not isinstance(obj.get("output"), list):
            raise UpstreamError(backend.name, "answered 200 with something that is not a response", invalid=True)
        usage, problem = responses_usage(obj.get("usage"))
        return Exchange(200, "application/json", raw, False, usage, None, usage_problem=problem, native=True)
    if not response.content_type.startswith(_EVENT_STREAM):
        await upstream._read(backend, response)
        raise UpstreamError(backend.name, f"answered a stream request with {response.content_type or 'no type'}",
                            invalid=True)
    ex = await upstream.first_events(backend, response, ResponsesPassthrough())
    ex.native = True
    return ex


_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesPassthrough:
    """A Responses event stream passed on as sent (re-framed as `event:` + `data:`); the final event gives the
    usage and the end, an `error` event ends it (passed on), garbage ends it with an `error` event."""

    __slots__ = ("_sse", "done", "error", "usage", "usage_problem")
    completion_chars = 0  # the final event always carries usage; no text is measured for an estimate

    def __init__(self) -> None:
        self._sse = SSEParser(MAX_SSE_LINE)
        self.done = False
        self.error: dict[str, Any] | None = None
        self.usage: Usage | None = None
        self.usage_problem: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        try:
            return self._emit(self._sse.feed(chunk))
        except SSEError:
            return self._fail("upstream SSE line exceeds the bound")

    def flush(self) -> bytes:
        return b"" if self.done else self._emit(self._sse.flush())

    def _emit(self, events: list[tuple[bytes, str]]) -> bytes:
        out = bytearray()
        for data, _name in events:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or not isinstance(kind := event.get("type"), str) or not kind.isascii():
                return bytes(out) + self._fail("upstream sent an event that is not a Responses event")
            if kind in _FINAL:
                self.done = True
                response = event.get("response")
                self.usage, self.usage_problem = responses_usage(response.get("usage") if isinstance(response, dict)
                                                                 else None)
            elif kind == "error":
                self.done = True
                message = event.get("message")
                self.error = {"message": message if isinstance(message, str) else "upstream stream error",
                              "type": "upstream_error", "param": None, "code": "upstream_error"}
            out += b"event: " + kind.encode() + b"\ndata: " + (orjson.dumps(event) if b"\n" in data else data) \
                + b"\n\n"
            if self.done:
                break
        return bytes(out)

    def _fail(self, message: str) -> bytes:
        self.done = True
        self.error = {"message": message, "type": "upstream_error", "param": None, "code": "upstream_invalid_stream"}
        return b"event: error\ndata: " + orjson.dumps({"type": "error", "code": "upstream_invalid_stream",
                                                          "message": message, "sequence_number": 0}) + b"\n\n"
