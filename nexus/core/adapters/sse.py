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

__all__ = ["COMMENT", "MAX_SSE_LINE", "SSEError", "SSEParser", "ServerEvent", "canonical"]

MAX_SSE_LINE = 8 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
COMMENT = "\x00comment"  # the event name of a comment line, with keep_comments (no field can produce it)


class SSEError(ValueError):
    """The stream cannot be parsed (a line past the bound)."""


ServerEvent = tuple[bytes, str]  # (data, event name): a plain tuple, built per event on the streaming hot path


def canonical(lines: bytes) -> bool:
    """`lines` is whole events, each one `data: ` line ending in a blank line, LF only: the parse of such bytes
    is the `data:` payloads, and re-framing them gives the same bytes. Checked with byte counts (C speed); a
    payload never holds a raw newline, as every line end ends the line."""
    if lines[:6] != b"data: " or lines[-2:] != b"\n\n" or b"\r" in lines:
        return False
    events = lines.count(b"\n\ndata: ") + 1
    return lines.count(b"\n") == 2 * events


class SSEParser:
    __slots__ = ("_comments", "_data", "_event", "_max_line", "_pending", "_started")

    def __init__(self, max_line: int = MAX_SSE_LINE, keep_comments: bool = False) -> None:
        self._pending = b""  # normalized to LF, except possibly one trailing CR
        self._data: list[bytes] = []
        self._event = ""
        self._started = False
        self._max_line = max_line
        self._comments = keep_comments  # comment lines come out in order, as (line, COMMENT)

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
        if not self._data and not self._event and canonical(lines):  # fast path: the usual upstream shape
            return [(b[6:], "message") for b in lines[:-2].split(b"\n\n")]
        for line in lines[:-1].split(b"\n"):
            self._line(line, out)
        return out

    @property
    def idle(self) -> bool:
        """Between events: nothing pending, no event half read."""
        return not self._data and not self._event and not self._pending and self._started

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
                out.append((b"\n".join(self._data), self._event or "message"))
            self._data, self._event = [], ""
            return
        if line[:1] == b":":
            if self._comments:
                out.append((line, COMMENT))
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
