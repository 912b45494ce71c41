"""Interleaved A/B latency: requests alternate between the variants one by one, so drift of the machine (another
tenant of the VM, frequency, the page cache) hits every variant alike; the figure is the difference of the
medians.

- `RawClient`: one keep-alive HTTP/1.1 connection that sends a prepared request and reads one response by its
  Content-Length, a few microseconds of client work, the same for every variant.
- `interleaved(calls, n)`: n rounds of one call per variant, the order reversed every other round.
- `asgi_post`: one POST straight into an ASGI app (no socket, no server), for the in-process figure; its
  time ends when the app hands over the response's last byte.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["RawClient", "asgi_post", "interleaved", "interleaved_async"]


class RawClient:
    def __init__(self, url: str, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self._sock = socket.create_connection((host, int(port)), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self._request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        self.last_head = b""

    def __call__(self) -> int:
        """Nanoseconds from sending the request to the last byte of its response (which must be a 200)."""
        t0 = time.perf_counter_ns()
        self._sock.sendall(self._request)
        buf = b""
        while True:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(buf) >= end + 4 + length:
                    break
        took = time.perf_counter_ns() - t0
        if not buf.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"expected 200, got {buf[:200]!r}")
        self.last_head = buf[:end]
        return took

    def close(self) -> None:
        self._sock.close()


def interleaved(calls: Mapping[str, Callable[[], int]], n: int) -> dict[str, list[int]]:
    names = list(calls)
    out: dict[str, list[int]] = {name: [] for name in names}
    for i in range(n):
        for name in names if i % 2 == 0 else reversed(names):
            out[name].append(calls[name]())
    return out


async def interleaved_async(calls: Mapping[str, Callable[[], Awaitable[tuple[int, list, int]]]],
                            n: int) -> dict[str, list[int]]:
    """As `interleaved`, for `asgi_post` calls: nanoseconds until the response's last byte was handed to the
    server (what a client waits for; the request's bookkeeping after that is not latency)."""
    names = list(calls)
    out: dict[str, list[int]] = {name: [] for name in names}
    for i in range(n):
        for name in names if i % 2 == 0 else reversed(names):
            t0 = time.perf_counter_ns()
            _, _, done = await calls[name]()
            out[name].append(done - t0)
    return out


async def asgi_post(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, list, int]:
    """POST `body` to `app` at `path`; (status, response headers, perf_counter_ns when the last body part was
    sent). The request must succeed with a 200."""
    sent = False
    start: dict[str, Any] = {}
    done = [0]

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:  # asked again only to notice a disconnect, which never comes here
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            done[0] = time.perf_counter_ns()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    if start.get("status") != 200:
        raise RuntimeError(f"expected 200, got {start.get('status')}")
    return start["status"], start["headers"], done[0]
