"""Per-request cost of the HTTP connection protocol: uvicorn's httptools protocol vs Nexus's limited one.

Feeds the same kept-alive POST (head and a small JSON body in one read) to each protocol over an in-memory
transport, with an ASGI app that answers at once, and reports the time per request (best of --rounds). It
isolates what nexus/router_node/protocol.py adds to every request, which the whole-gateway benchmark
(bench/gateway.py) cannot resolve on a shared machine.

    python bench/protocol.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from uvicorn.config import Config  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from nexus.core.config import ServerConfig  # noqa: E402
from nexus.router_node.protocol import protocol_for  # noqa: E402

BODY = b'{"model":"m","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    b"Content-Type: application/json\r\nAuthorization: Bearer sk-0123456789abcdef\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
ANSWER = b'{"ok":true}'


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": ANSWER})


async def per_request_us(cls: type[HttpToolsProtocol], requests: int) -> float:
    config = Config(app, http=cls, lifespan="off", log_level="warning")
    config.load()
    state = ServerState()
    proto = cls(config=config, server_state=state, app_state={})
    proto.connection_made(Transport())
    t0 = time.perf_counter()
    for _ in range(requests):
        proto.data_received(REQUEST)
        while state.tasks:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    proto.connection_lost(None)
    return elapsed / requests * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    classes = {"uvicorn httptools": HttpToolsProtocol, "nexus limited": protocol_for(ServerConfig())}
    best = dict.fromkeys(classes, float("inf"))
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour hurts both alike
        for name, cls in classes.items():
            best[name] = min(best[name], asyncio.run(per_request_us(cls, args.requests)))
    for name, us in best.items():
        print(f"{name:18s} {us:7.2f} us/request (best of {args.rounds} x {args.requests})")
    print(f"added by the limits: {best['nexus limited'] - best['uvicorn httptools']:+.2f} us/request")


if __name__ == "__main__":
    main()
