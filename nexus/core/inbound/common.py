"""What the inbound translators share: reading the gateway's chat stream, and small request checks.

The chat stream a translator reads is the gateway's own output (nexus/core/adapters: re-framed,
canonical `data: <json>\\n\\n` events and `: comment` lines), so framing here is that one form; events are
buffered across chunks, so how the bytes were split never matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from nexus.core.gateway_errors import BadRequest
from nexus.core.usage import Usage, openai_usage

__all__ = ["DONE", "ChatEvents", "ChatRenderer", "need", "obj", "positive_int", "usage_of"]

DONE = "[DONE]"
_EMPTY: Mapping[str, Any] = {}


def need(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise BadRequest(f"{param}: {message}", param=param)


def obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else _EMPTY


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def usage_of(chunk: Mapping[str, Any]) -> Usage | None:
    usage, _ = openai_usage(chunk.get("usage"))
    return usage


class ChatEvents:
    """Parse the gateway's chat SSE output as it arrives: each `feed` returns the whole events so far, as
    JSON objects (chunks, or `{"error": ...}`) or `DONE`; comments and undecodable events are skipped."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Any]:
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 2:]
        out: list[Any] = []
        for frame in buf[:end].split(b"\n\n"):
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        out.append(DONE)
                        continue
                    try:
                        event = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(event, dict):
                        out.append(event)
        return out


class ChatRenderer:
    """Base of the stream translators: each chat event of the gateway's stream goes to `_chunk` (a chunk; its
    usage is kept in `usage` first), `_end` (the chat stream's `[DONE]`) or `fail` (an error event, which ends
    the stream in the protocol's own error form). After either end `done` is set and input is ignored."""

    __slots__ = ("_events", "done", "usage")

    def __init__(self) -> None:
        self._events = ChatEvents()
        self.usage: Usage | None = None
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        for event in self._events.feed(chunk):
            if self.done:
                break
            if event == DONE:
                out += self._end()
            elif "error" in event and "choices" not in event:
                out += self.fail(str(obj(event["error"]).get("message") or "upstream stream error"))
            else:
                if (usage := usage_of(event)) is not None:
                    self.usage = usage
                out += self._chunk(event)
        return bytes(out)

    def fail(self, message: str) -> bytes:
        raise NotImplementedError

    def _end(self) -> bytes:
        raise NotImplementedError

    def _chunk(self, event: dict[str, Any]) -> bytes:
        raise NotImplementedError
