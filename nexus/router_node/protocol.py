"""The gateway's HTTP/1.1 connection protocol: uvicorn's httptools protocol with limits on what a client
may make the replica hold.

uvicorn with httptools bounds neither the request head (size, header count) nor the time a client may
take to send it or its body; an idle connection only times out after a first response; and there is no
cap on open connections short of the file-descriptor limit. `LimitedHttpToolsProtocol` is a thin subclass
that adds, per connection:

- head limits: more than `max_header_bytes` of request line and headers (counted as they are parsed, and
  as raw bytes while a head is unfinished, so an endless header never buffers more than the limit plus one
  read), or more than `max_headers` headers: 431 and close;
- a head timeout: the head must arrive within `header_timeout_seconds` of the connection opening (or of the
  first byte of a later request on it): 408 and close, or a silent close for a connection that sent nothing;
- a body timeout: the body must arrive within `body_timeout_seconds` of its head: 408 and close, and the
  application's `receive()` returns `http.disconnect` so nothing waits for ever;
- a connection cap: a connection beyond `max_connections` open ones gets a fast 503 with Retry-After and
  is closed, so the replica never runs out of file descriptors for the clients it does serve;
- a `ClientWatch` in every request's scope (`scope["nexus.client"]`): the application registers the task
  doing a request's work, and a lost connection cancels it at once (ASGI alone would only tell it at its next
  `receive()`), so a client that leaves stops its upstream call and frees its in-flight slot.

Idle keep-alive connections are closed by uvicorn's own `timeout_keep_alive` (server.keepalive_timeout_seconds).
The hot path gains an integer add and two compares per read, and a counter per header; timers are armed
once per request head and body, never per read.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from nexus.core.config import ServerConfig
from nexus.core.gateway_errors import error_body

__all__ = ["ClientWatch", "HttpLimits", "LimitedHttpToolsProtocol", "protocol_for"]

log = logging.getLogger("nexus.router")
OVER_CAP_GRACE_SECONDS = 1.0  # how long a connection beyond the cap may take to send its request
LINGER_SECONDS = 1.0  # after a refusal, how long the connection stays half-closed before it is closed
_FD_RESERVE = 128  # descriptors kept for Redis, logs and the like beyond client and upstream connections


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def of(cls, server: ServerConfig) -> HttpLimits:
        return cls(
            server.max_header_bytes,
            server.max_headers,
            server.header_timeout_seconds,
            server.body_timeout_seconds,
            connection_cap(server),
        )


def connection_cap(server: ServerConfig) -> int:
    """`server.max_connections`, lowered when the process may not open that many descriptors next to one
    upstream connection per concurrent request. The soft RLIMIT_NOFILE is raised to the hard one first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return server.max_connections
    room = max(16, soft - min(server.max_concurrent_requests, soft // 2) - _FD_RESERVE)
    if room < server.max_connections:
        log.warning(
            "server.max_connections %d lowered to %d: the process may open %d file descriptors",
            server.max_connections, room, soft,
        )
    return min(server.max_connections, room)


def _canned(status: int, message: str, code: str, extra: bytes = b"") -> bytes:
    body = error_body(message, "invalid_request_error" if status < 500 else "service_unavailable", code)
    return b"".join([
        STATUS_LINE[status],
        b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(), b"\r\n",
        extra, b"connection: close\r\n\r\n", body,
    ])


@dataclass(frozen=True, slots=True)
class _Refusals:
    """The canned responses of one set of limits; each closes the connection."""

    over_cap: bytes
    head_too_large: bytes
    too_many_headers: bytes
    head_timeout: bytes
    body_timeout: bytes

    @classmethod
    def of(cls, limits: HttpLimits) -> _Refusals:
        return cls(
            _canned(503, f"this replica has {limits.max_connections} connections open (server.max_connections); "
                    "retry shortly", "too_many_connections", b"retry-after: 1\r\n"),
            _canned(431, f"request line and headers exceed server.max_header_bytes ({limits.max_header_bytes})",
                    "headers_too_large"),
            _canned(431, f"request has more than server.max_headers ({limits.max_headers}) headers",
                    "too_many_headers"),
            _canned(408, f"request headers did not arrive within server.header_timeout_seconds "
                    f"({limits.header_timeout:g} s)", "header_timeout"),
            _canned(408, f"request body did not arrive within server.body_timeout_seconds "
                    f"({limits.body_timeout:g} s)", "body_timeout"),
        )


class ClientWatch:
    """Per connection: `task` is the work to cancel if the client goes away; `gone` says it went."""

    __slots__ = ("gone", "task")

    def __init__(self) -> None:
        self.gone = False
        self.task: asyncio.Task | None = None

    def lost(self) -> None:
        self.gone = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Set `limits` and `refusals` on a subclass (`protocol_for`); uvicorn builds one instance per connection.

    Timers: one head timer per connection from its opening, re-armed for a later request only when its head
    does not arrive in one read; a body timer only when a body does not arrive with its head. The usual
    request (head and body in one read on a kept-alive connection) arms none."""

    limits: ClassVar[HttpLimits]
    refusals: ClassVar[_Refusals]
    _max_head: ClassVar[int]  # limits.max_header_bytes and max_headers, one attribute lookup away
    _max_headers: ClassVar[int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests, or reading a head
        self._in_body = False  # head parsed, body not complete
        self._head_bytes = 0  # raw bytes received while this head is unfinished
        self._refusal: bytes | None = None  # set by a parser callback that refused the request
        self._timer: asyncio.TimerHandle | None = None
        self._over_cap = False
        self._discarding = False  # refused: nothing more is parsed until the close
        self._watch = ClientWatch()

    # -- connection ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._over_cap = True
            self._arm(OVER_CAP_GRACE_SECONDS, self.transport.close)
        else:
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._watch.lost()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._over_cap:
            self._refuse(self.refusals.over_cap)
            return
        if self._in_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head:
            if self._head_bytes > self._max_head:
                self._refuse(self.refusals.head_too_large)
            elif self._head_bytes and self._timer is None:
                self._arm(self.limits.header_timeout, self._head_timed_out)
        elif self._in_body and self._timer is None:
            self._arm(self.limits.body_timeout, self._body_timed_out)

    # -- parser callbacks -----------------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        # the head is checked once, here: per-header bookkeeping in on_header cost more than the rest together.
        # `_head_bytes` (this head's reads, maybe with some body) bounds its size; only past the limit is the
        # exact size summed. Between reads the same counter stops an unfinished head (data_received).
        if len(self.headers) > self._max_headers:
            self._stop(self.refusals.too_many_headers)
        if self._head_bytes > self._max_head and self._head_size() > self._max_head:
            self._stop(self.refusals.head_too_large)
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.scope["nexus.client"] = self._watch  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_message_complete(self) -> None:
        self._in_head = True
        if self._in_body:
            self._in_body = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        super().on_message_complete()

    # -- refusals and timers ------------------------------------------------------------------------------
    def _stop(self, response: bytes) -> None:
        self._refusal = response
        raise _Refused  # stops the parser; data_received sends the refusal

    def _refuse(self, response: bytes) -> None:
        """Send `response`, half-close, stop reading, and close after LINGER_SECONDS. Closing at once with the
        client's unread bytes still arriving would reset the connection and could destroy the response before
        it left; reading and dropping them instead would let a client that keeps sending (a header bomb)
        make the replica read megabytes per refusal. Paused, the client's own send buffer fills and it stops."""
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(response)
        self._discarding = True
        if transport.can_write_eof():
            transport.write_eof()
        transport.pause_reading()
        self._timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _arm(self, delay: float, callback: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(self.refusals.head_timeout)
        else:
            self.transport.close()  # nothing sent: an idle connection, closed quietly

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        # the application's receive() now returns http.disconnect and its sends are dropped
        started, cycle.disconnected = cycle.response_started, True
        cycle.message_event.set()
        if started:
            self.transport.close()
        else:
            self._refuse(self.refusals.body_timeout)


def protocol_for(server: ServerConfig) -> type[LimitedHttpToolsProtocol]:
    """A protocol class bound to these limits, for `uvicorn.Config(http=...)`."""
    limits = HttpLimits.of(server)
    attrs = {"limits": limits, "refusals": _Refusals.of(limits), "_max_head": limits.max_header_bytes,
             "_max_headers": limits.max_headers}
    return type("NexusHttpProtocol", (LimitedHttpToolsProtocol,), attrs)
