"""Server-sent events, parsed as the WHATWG HTML spec says, fed with bytes as they arrive.

Lines end in CRLF, LF or CR (a CR at the end of one chunk may be half of a CRLF: it waits for the next);
a blank line dispatches the event; `data:` lines join with LF; lines starting with `:` are comments; a line
without a colon is a field with an empty value; one space after the colon is dropped; `event:` names the
event; `id:` and `retry:` are read and ignored; a leading UTF-8 BOM is dropped. An event with no data is
not dispatched. A line longer than `max_line` is an error (`SSEError`), so an upstream cannot make the
parser buffer without bound.

The common upstream shape (LF line ends, one `data:` line per event) takes a fast path of C-level byte
operations; anything else goes line by line. Both give the same events: the output never depends on how
the bytes were split into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_SSE_LINE", "SSEError", "SSEParser", "ServerEvent"]

MAX_SSE_LINE = 8 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The stream cannot be parsed (a line past the bound)."""


@dataclass(frozen=True, slots=True)
class ServerEvent:
    data: bytes
    event: str = "message"


class SSEParser:
    __slots__ = ("_comments", "_data", "_event", "_max_line", "_pending", "_started", "comments")

    def __init__(self, max_line: int = MAX_SSE_LINE, keep_comments: bool = False) -> None:
        self._pending = b""  # normalized to LF, except possibly one trailing CR
        self._data: list[bytes] = []
        self._event = ""
        self._started = False
        self._max_line = max_line
        self._comments = keep_comments
        self.comments: list[bytes] = []  # with keep_comments: comment lines seen, for the caller to take

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        buf = self._pending + chunk if self._pending else chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._pending = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM):]
        if b"\r" in buf:
            held = buf.endswith(b"\r")
            buf = buf[:-1] if held else buf
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held else b"")
        end = buf.rfind(b"\n")
        if end < 0:
            self._check(buf)
            self._pending = buf
            return []
        self._pending = buf[end + 1 :]
        self._check(self._pending)
        out: list[ServerEvent] = []
        lines = buf[: end + 1]
        if (not self._data and not self._event and lines.endswith(b"\n\n") and b"\n:" not in lines
                and lines[:1] != b":"):
            # fast path: whole events; each block one `data: ` line (the usual upstream shape)
            blocks = lines[:-2].split(b"\n\n")
            if all(b.startswith(b"data: ") and b"\n" not in b for b in blocks):
                return [ServerEvent(b[6:]) for b in blocks]
        for line in lines[:-1].split(b"\n"):
            self._line(line, out)
        return out

    def flush(self) -> list[ServerEvent]:
        """The stream ended: a final CR was a line end; an event not closed by a blank line is dropped."""
        if self._pending == b"\r":
            self._pending = b""
            return self.feed(b"\n")
        return []

    def _check(self, pending: bytes) -> None:
        if len(pending) > self._max_line:
            raise SSEError(f"an SSE line exceeds {self._max_line} bytes")

    def _line(self, line: bytes, out: list[ServerEvent]) -> None:
        if not line:  # dispatch
            if self._data:
                out.append(ServerEvent(b"\n".join(self._data), self._event or "message"))
            self._data, self._event = [], ""
            return
        if line[:1] == b":":
            if self._comments:
                self.comments.append(line)
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
