"""Relaying an upstream answer to the client: one JSON body, or an SSE stream pumped event by event.

A stream ends one of three ways, returned as the record's outcome: the upstream finished (`ok`), it broke
off (`midstream_error`: the client gets an OpenAI-style error event unless the upstream already sent one,
then the end of the body), or the client left (`client_disconnected`: the upstream call is closed at once).
`Delivered` counts the stream events the client got, which is what a stream cut short is billed by.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from nexus.core.pipeline import Route, explain
from nexus.core.telemetry_store import Outcome
from nexus.router_node.asgi import Headers, start_response
from nexus.router_node.headers import SSE_HEADERS
from nexus.router_node.upstream import Exchange, MidStreamError

__all__ = ["Delivered", "answer", "stream"]


class Delivered:
    """Stream events sent to the client so far (about one token each)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events = 0

    def add(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data:") - chunk.count(b"data: [DONE]")


def _body(body: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


async def answer(send: Any, ex: Exchange, headers: Headers, decision: Route, with_explain: bool) -> str:
    body = ex.first
    if with_explain and ex.status == 200:
        try:
            payload = orjson.loads(body)
            payload["nexus_explain"] = explain(decision)
            body = orjson.dumps(payload)
        except (orjson.JSONDecodeError, TypeError):
            pass
    headers = [(b"content-type", ex.content_type.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await start_response(send, ex.status, headers)
    await send({"type": "http.response.body", "body": body})
    return Outcome.OK if ex.status == 200 else Outcome.http(ex.status)


async def _pump(send: Any, ex: Exchange, delivered: Delivered) -> str:
    try:
        async for chunk in ex.rest():
            await send(_body(chunk))
            delivered.add(chunk)
    except MidStreamError as err:
        if not err.reported:
            event = {
                "error": {
                    "message": f"upstream failed mid-stream: {err}",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_stream_error",
                }
            }
            await send(_body(b"data: " + orjson.dumps(event) + b"\n\n"))
        await send({"type": "http.response.body", "body": b""})
        return Outcome.MIDSTREAM_ERROR
    await send({"type": "http.response.body", "body": b""})
    return Outcome.OK


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def stream(send: Any, receive: Any, ex: Exchange, headers: Headers, decision: Route, with_explain: bool,
                 delivered: Delivered) -> str:
    await start_response(send, 200, [*SSE_HEADERS, *headers])
    if with_explain:
        await send(_body(b": nexus-explain " + orjson.dumps(explain(decision)) + b"\n\n"))
    await send(_body(ex.first))
    delivered.add(ex.first)
    pump_task = asyncio.ensure_future(_pump(send, ex, delivered))
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({pump_task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if pump_task in done:
            return pump_task.result()
        pump_task.cancel()
        ex.close()
        await asyncio.gather(pump_task, return_exceptions=True)
        return Outcome.CLIENT_DISCONNECTED
    finally:
        watch.cancel()
        if not pump_task.done():
            pump_task.cancel()
        ex.close()
