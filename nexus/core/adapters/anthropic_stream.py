"""Anthropic Messages SSE -> OpenAI `chat.completion.chunk` SSE, fed as bytes arrive.

Invariants:
- Pure: no I/O, no clock; `model` and `created` come in as arguments.
- Stream output depends only on the bytes fed, never on how they are split into chunks; after
  `message_stop` or an error event the translator is `done` and ignores further input.
- With `json_tool` (JSON mode emulated through the forced `JSON_TOOL`), that tool's input streams as
  content deltas and the stream finishes with `stop`.
- Usage counts are checked like a reply's (nexus/core/adapters/anthropic_messages.py `usage_problem`):
  invalid counts are left out and named in `usage_problem`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from nexus.core.adapters.anthropic_messages import (
    FINISH_REASONS,
    JSON_TOOL,
    USAGE_KEYS,
    as_object,
    error_object,
    loads,
    to_usage,
    usage_problem,
)
from nexus.core.adapters.sse import MAX_SSE_LINE, SSEError, SSEParser
from nexus.core.usage import Usage, count

__all__ = ["MAX_SSE_LINE", "NativeStream", "StreamTranslator"]


class StreamTranslator:
    """Anthropic Messages SSE -> OpenAI `chat.completion.chunk` SSE, fed as bytes arrive.

    `feed(chunk)` returns what to send to the client now, `flush()` what is left when the upstream body
    ends. The role chunk goes out with the first content, so an upstream that fails before any content
    produces nothing but an error event. `usage` (None until the upstream reported any),
    `finish_reason`, `error` and `done` let the gateway bill and record every stream, usage asked or
    not. SSE lines may end in \\n, \\r\\n or \\r; comments, `id:` and `retry:` are ignored; a line
    longer than `MAX_SSE_LINE` is an upstream error."""

    __slots__ = ("_created", "_done", "_error", "_finish", "_id", "_include_usage", "_json_blocks", "_json_tool",
                 "_model", "_raw_usage", "_sse", "_started", "_tools", "usage_problem")
    completion_chars = 0  # Anthropic always reports usage: no text to measure for an estimate

    def __init__(self, model: str, created: int, include_usage: bool, json_tool: bool = False) -> None:
        self._model, self._created, self._include_usage = model, created, include_usage
        self._json_tool = json_tool  # JSON mode emulated: the forced tool's input streams as content
        self._json_blocks: set[int | None] = set()
        self._sse = SSEParser(MAX_SSE_LINE)
        self._id = ""
        self._started = self._done = False
        self._tools: dict[int | None, int] = {}  # Anthropic content block index -> OpenAI tool_calls index
        self._raw_usage: dict[str, int] | None = None
        self._finish: str | None = None
        self._error: dict[str, Any] | None = None
        self.usage_problem: str | None = None  # the upstream sent usage counts that are not counts

    @property
    def done(self) -> bool:
        return self._done

    @property
    def usage(self) -> Usage | None:
        return None if self._raw_usage is None else to_usage(self._raw_usage)

    @property
    def finish_reason(self) -> str | None:
        return self._finish

    @property
    def error(self) -> dict[str, Any] | None:
        """The OpenAI error object sent to the client, if the stream ended in an error."""
        return self._error

    def feed(self, chunk: bytes) -> bytes:
        if self._done or not chunk:
            return b""
        try:
            return self._events(self._sse.feed(chunk))
        except SSEError:
            return self._fail(f"upstream SSE line exceeds {MAX_SSE_LINE} bytes", "upstream_invalid_stream")

    def flush(self) -> bytes:
        """The upstream body ended: the output still held back. Adds no error event: if `done` is still
        False the stream was cut short, and the caller ends it with its own error event."""
        return b"" if self._done else self._events(self._sse.flush())

    def _events(self, events: list[Any]) -> bytes:
        out = bytearray()
        for data, name in events:
            out += self._translate(name, data)
            if self._done:
                break
        return bytes(out)

    def _translate(self, name: str, raw: bytes) -> bytes:
        if not isinstance(data := loads(raw), Mapping):
            return self._fail("upstream sent an SSE event that is not a JSON object", "upstream_invalid_stream")
        kind, index = data.get("type", name), data.get("index")
        index = index if isinstance(index, int) else None
        if kind == "message_start":
            message = as_object(data.get("message"))
            self._id = msg_id if isinstance(msg_id := message.get("id"), str) else self._id
            self._add_usage(message.get("usage"))
            return b""
        if kind == "content_block_start":
            block = as_object(data.get("content_block"))
            if block.get("type") == "tool_use" and self._json_tool and block.get("name") == JSON_TOOL:
                self._json_blocks.add(index)
                return self._text(orjson.dumps(block["input"]).decode() if block.get("input") else "")
            if block.get("type") == "tool_use":
                n = self._tools[index] = len(self._tools)
                args = orjson.dumps(block["input"]).decode() if block.get("input") else ""
                call = {"index": n, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": args}}
                return self._chunk({"tool_calls": [call]})
            return self._text(block.get("text")) if block.get("type") == "text" else b""
        if kind == "content_block_delta":
            delta = as_object(data.get("delta"))
            if delta.get("type") == "text_delta":
                return self._text(delta.get("text"))
            args, n = delta.get("partial_json"), self._tools.get(index)
            if delta.get("type") == "input_json_delta" and index in self._json_blocks:
                return self._text(args)
            if delta.get("type") == "input_json_delta" and isinstance(args, str) and args and n is not None:
                return self._chunk({"tool_calls": [{"index": n, "function": {"arguments": args}}]})
            return b""
        if kind == "message_delta":
            self._add_usage(data.get("usage"))
            reason = as_object(data.get("delta")).get("stop_reason")
            finish = FINISH_REASONS.get(str(reason), "stop")
            finish = "stop" if finish == "tool_calls" and self._json_blocks and not self._tools else finish
            return self._finish_chunk(finish) if reason else b""
        if kind == "message_stop":
            out = self._finish_chunk("stop")
            if self._include_usage and (usage := self.usage) is not None:
                out += self._encode([], usage.to_openai())
            self._done = True
            return out + b"data: [DONE]\n\n"
        if kind == "error":
            err = as_object(data.get("error"))
            return self._fail(err.get("message") or "upstream stream error", err.get("type"))
        return b""  # ping, content_block_stop, and event types this version does not know

    def _add_usage(self, usage: Any) -> None:
        if (problem := usage_problem(usage)) is not None:
            self.usage_problem = problem  # the bad counts are left out; billed from what is valid, or estimated
        counts = {k: v for k, v in as_object(usage).items() if k in USAGE_KEYS and count(v) is not None}
        if counts:  # message_delta counts are cumulative: the newest value of each key wins
            self._raw_usage = {**(self._raw_usage or {}), **counts}

    def _text(self, text: Any) -> bytes:
        return self._chunk({"content": text}) if isinstance(text, str) and text else b""

    def _finish_chunk(self, reason: str) -> bytes:
        finished, self._finish = self._finish is not None, self._finish or reason
        return b"" if finished else self._chunk({}, reason)

    def _start(self) -> bytes:  # the role chunk, once, before anything else
        started, self._started = self._started, True
        return b"" if started else self._chunk({"role": "assistant", "content": ""})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._start() + self._encode([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def _encode(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        body = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                "choices": choices}
        if self._include_usage:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def _fail(self, message: Any, kind: Any) -> bytes:
        """End the stream with an error event; `kind` is an Anthropic error type or our own code."""
        self._done = True
        self._error = error_object(message if isinstance(message, str) else "upstream stream error", kind, 502)
        return b"data: " + orjson.dumps({"error": self._error}) + b"\n\n"


class NativeStream(StreamTranslator):
    """An Anthropic stream for a client that speaks Anthropic (nexus/router_node/native.py): every event passed
    on as sent (re-framed as `event:` + `data:`), with usage, the end and errors tracked for billing as when
    translating. An error event ends the stream and is passed on; garbage ends it with Anthropic's own error
    event."""

    __slots__ = ()

    def _translate(self, name: str, raw: bytes) -> bytes:
        if not isinstance(data := loads(raw), Mapping):
            return self._fail("upstream sent an SSE event that is not a JSON object", "upstream_invalid_stream")
        kind = data.get("type", name)
        kind = kind if isinstance(kind, str) and kind.isascii() and kind.replace("_", "").isalnum() else "message"
        if kind == "message_start":
            self._add_usage(as_object(data.get("message")).get("usage"))
        elif kind == "message_delta":
            self._add_usage(data.get("usage"))
            self._finish = str(as_object(data.get("delta")).get("stop_reason"))
        elif kind == "error":
            err = as_object(data.get("error"))
            self._done = True
            self._error = error_object(str(err.get("message") or "upstream stream error"), err.get("type"), 502)
        elif kind == "message_stop":
            self._done = True
        if b"\n" in raw:  # sent as several data: lines: one line, the same JSON
            raw = orjson.dumps(data)
        return b"event: " + kind.encode() + b"\ndata: " + raw + b"\n\n"

    def _fail(self, message: Any, kind: Any) -> bytes:
        self._done = True
        self._error = error_object(message if isinstance(message, str) else "upstream stream error", kind, 502)
        payload = {"type": "error", "error": {"type": "api_error", "message": self._error["message"]}}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
