"""The OpenAI-compatible wire protocol: openai, vllm, llamacpp, lmstudio, generic, Google's OpenAI-compatible
endpoint, and Ollama's chat (its OpenAI-compatible path; nexus/core/adapters/ollama.py does its discovery).

Requests pass through as the client sent them, rewriting only the model name (aliases) and, for a stream,
asking for usage (`stream_options.include_usage`) when the gateway wants it and the client did not; a
backend that refuses that field answers 400 naming it (`refuses_usage_option`: the gateway retries once
without it). The key goes in `Authorization: Bearer`. Probes list `GET /v1/models`.

Invariants:
- Pure: no I/O, no clock; what the backend sent goes in as bytes, what the client may see comes out.
- A 200 body is the API's object or it is refused (`check_body`): a chat completion is a JSON object with a
  `choices` list of objects, an embedding list one with a `data` list; HTML, truncated JSON or an error
  object are upstream failures, never a success for the client.
- A stream is re-framed event by event (nexus/core/adapters/sse.py: CRLF, LF and CR line ends, comments, multi-line
  data) and sent on as `data: ...\\n\\n`. Its first event must be a JSON object with a `choices` list before
  anything reaches the client; after that an event that is not a JSON object ends the stream with an error
  event. An upstream `{"error": ...}` event ends it too, passed on. `[DONE]` marks the end.
- Usage is checked (nexus/core/usage.py): an invalid object counts as missing, with `usage_problem` saying
  why. Without usage, the completion's text length gives the estimate (`completion_chars`).
"""

from __future__ import annotations

from typing import Any

import orjson

from nexus.core.adapters.base import Answer, BackendAdapter, Call, InvalidAnswer
from nexus.core.adapters.sse import COMMENT, ServerEvent, SSEError, SSEParser
from nexus.core.usage import Usage, openai_usage

__all__ = ["OPENAI", "OpenAIAdapter", "OpenAIStream", "check_body", "completion_chars", "error_envelope"]

_DONE = b"data: [DONE]\n\n"


def _plain(chunk: bytes) -> bool:
    """`chunk` is whole events in canonical framing (nexus/core/adapters/sse.py `canonical`), every one a JSON object
    with no error and no usage object in it: nothing to check or change. All byte scans, no parsing."""
    if chunk[:7] != b"data: {" or chunk[-2:] != b"\n\n":
        return False
    lines = chunk.count(b"\n")
    if lines != 2 and lines != 2 * (chunk.count(b"\n\ndata: {") + 1):
        return False
    return b"\r" not in chunk and b'"error"' not in chunk and _no_usage(chunk)


def _no_usage(data: bytes) -> bool:
    """No usage in these bytes beyond `"usage":null` (OpenAI sends that in every chunk when usage is asked):
    the count of usage keys equals the count of null ones."""
    n = data.count(b'"usage"')
    return n == 0 or n == data.count(b'"usage":null') + data.count(b'"usage": null')


def check_body(payload: bytes, embeddings: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """(the parsed object, None) when `payload` is the API's object, else (None, what is wrong)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        head = payload[:40].decode("utf-8", "replace")
        return None, f"answered 200 with a body that is not JSON (starts {head!r})"
    if not isinstance(obj, dict):
        return None, f"answered 200 with JSON that is not an object ({type(obj).__name__})"
    key = "data" if embeddings else "choices"
    items = obj.get(key)
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        what = "an error object" if "error" in obj else f"an object without a '{key}' list"
        return None, f"answered 200 with {what}"
    return obj, None


def completion_chars(obj: dict[str, Any]) -> int:
    """Characters of text a chat completion carries (message content and tool call arguments)."""
    n = 0
    for choice in obj.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            n += _text_len(message)
    return n


def _text_len(part: dict[str, Any]) -> int:
    n = len(c) if isinstance(c := part.get("content"), str) else 0
    for call in part.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(args := fn.get("arguments"), str):
            n += len(args)
    return n


def error_envelope(status: int, payload: bytes, backend: str) -> bytes:
    """A non-200 answer as the OpenAI error envelope: the backend's own when it sent one, else built.
    Gemini wraps its error object in a JSON array (`[{"error": {"code", "message", "status"}}]`)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and len(obj) == 1 and isinstance(obj[0], dict):
        obj = obj[0]
    if isinstance(obj, dict) and isinstance(err := obj.get("error"), dict) and isinstance(err.get("message"), str):
        kind = err.get("type") or "upstream_error"
        code = err.get("code") if isinstance(err.get("code"), str) or err.get("code") is None else err.get("status")
        return orjson.dumps({"error": {"message": err["message"], "type": str(kind), "param": err.get("param"),
                                       "code": code}})
    detail = obj.get("message") or obj.get("detail") if isinstance(obj, dict) else None
    if not isinstance(detail, str):
        detail = payload[:300].decode("utf-8", "replace")
    detail = "".join(ch if ch.isprintable() else " " for ch in detail).strip()[:300]
    kind = "invalid_request_error" if status < 500 else "upstream_error"
    message = f"backend {backend} answered HTTP {status}" + (f": {detail}" if detail else "")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": f"upstream_{status}"}})


class OpenAIStream:
    """An OpenAI chat completion stream, re-framed and checked as it passes (`feed`, then `flush` at the end).

    `drop_usage_event`: Nexus asked for usage and the client did not, so the usage-only event is not sent
    on. `count_content`: no usage is expected, so every event is parsed to measure the text for the
    estimate. `error` is the error object the stream ended with (sent to the client already, unless the
    stream had not started: then the caller fails over)."""

    __slots__ = ("_count", "_drop_usage", "_sse", "_started", "completion_chars", "done", "error", "usage",
                 "usage_problem")

    def __init__(self, drop_usage_event: bool = False, count_content: bool = False) -> None:
        self._sse = SSEParser(keep_comments=True)
        self._drop_usage = drop_usage_event
        self._count = count_content
        self._started = False
        self.usage: Usage | None = None
        self.usage_problem: str | None = None
        self.completion_chars = 0
        self.done = False
        self.error: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        if self._started and not self._count and self._sse.idle and _plain(chunk):
            return chunk  # mid-stream events in canonical framing with nothing to check: sent on as they are
        try:
            events = self._sse.feed(chunk)
        except SSEError as exc:
            return self._fail(str(exc))
        return self._emit(events)

    def flush(self) -> bytes:
        return b"" if self.done else self._emit(self._sse.flush())

    def _emit(self, events: list[ServerEvent]) -> bytes:
        parts = []
        for data, name in events:
            if self.done:
                break
            if name == COMMENT:
                if self._started:  # keep-alives pass once the stream has started
                    parts.append(data + b"\n\n")
            elif (self._started and not self._count and name == "message" and data[:1] == b"{"
                    and b'"error"' not in data and _no_usage(data)):
                parts.append(b"data: " + data + b"\n\n")  # the usual event ("usage":null at most): as it is
            else:
                parts.append(self._event(data, name))
        return b"".join(parts)

    def _event(self, data: bytes, name: str) -> bytes:
        if data == b"[DONE]":
            if not self._started:
                return self._fail("the stream ended before its first event")
            self.done = True
            return _DONE
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            return self._fail("upstream sent an SSE event that is not a JSON object")
        if ("error" in obj and "choices" not in obj) or name == "error":
            err = obj.get("error")
            return self._fail(err.get("message") if isinstance(err, dict) else None, err)
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return self._fail("upstream sent a stream event without a 'choices' list")
        if "usage" in obj and obj["usage"] is not None:
            self.usage, self.usage_problem = openai_usage(obj["usage"])
            if self._drop_usage and not choices:
                self._started = True
                return b""
        if self._count:
            for choice in choices:
                if isinstance(choice, dict) and isinstance(delta := choice.get("delta"), dict):
                    self.completion_chars += _text_len(delta)
        self._started = True
        return b"data: " + data + b"\n\n"

    def _fail(self, message: str | None, upstream: Any = None) -> bytes:
        """End the stream with an error event (an upstream error object keeps its type and code)."""
        self.done = True
        src = upstream if isinstance(upstream, dict) else {}
        self.error = {
            "message": message if isinstance(message, str) and message else "upstream stream error",
            "type": str(src.get("type") or "upstream_error"),
            "param": None,
            # an error the upstream reported keeps its code; one found here says the stream was malformed
            "code": src.get("code") if isinstance(src.get("code"), str)
            else "upstream_error" if upstream is not None else "upstream_invalid_stream",
        }
        return b"data: " + orjson.dumps({"error": self.error}) + b"\n\n"


class OpenAIAdapter(BackendAdapter):
    """The OpenAI API as OpenAI-compatible servers speak it: bodies pass through, checked."""

    name = "openai"
    asks_stream_usage = True

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def encode(self, body: dict[str, Any], raw: bytes, *, path: str, model: str, stream: bool,
               ask_usage: bool) -> Call:
        patch: dict[str, Any] = {}
        if body.get("model") != model:
            patch["model"] = model
        if ask_usage:
            patch["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return Call(path, orjson.dumps({**body, **patch}) if patch else raw)  # unchanged: the client's own bytes

    def answer(self, payload: bytes, *, model: str, created: int, embeddings: bool,
               json_answer: bool = False) -> Answer:
        obj, problem = check_body(payload, embeddings)
        if obj is None:
            raise InvalidAnswer(problem or "answered 200 with an unexpected body")
        usage, invalid = openai_usage(obj.get("usage"))
        return Answer(payload, usage, invalid, 0 if embeddings else completion_chars(obj))

    def error_body(self, status: int, payload: bytes, backend: str) -> bytes:
        return error_envelope(status, payload, backend)

    def stream(self, *, model: str, created: int, asked_usage: bool, client_wants_usage: bool,
               json_answer: bool = False) -> OpenAIStream:
        return OpenAIStream(drop_usage_event=asked_usage, count_content=not (asked_usage or client_wants_usage))

    def refuses_usage_option(self, payload: bytes) -> bool:
        return b"stream_options" in payload


OPENAI = OpenAIAdapter()
