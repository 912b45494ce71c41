"""Streaming through the gateway: chunks pass through as the upstream sends them (never buffered), and the
usage-only chunk the gateway asks upstream for (to bill) reaches only clients that asked for usage.

The paced upstream is a strict stand-in of OpenAI's streaming wire format (`chat.completion.chunk` events,
a usage-only chunk with `choices: []` when `stream_options.include_usage`, then `data: [DONE]`) that sends
chunk k+1 only once the client has received chunk k: a gateway that buffered the stream would deliver
nothing until the end, so the upstream would stall and the test fail, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from tests.harness import eventually
from tests.router_node.conftest import backend_for

CHUNKS = 6


class PacedUpstream:
    """POST /v1/chat/completions streams CHUNKS content chunks, each after the client got the one before."""

    def __init__(self) -> None:
        self.received = [asyncio.Event() for _ in range(CHUNKS)]
        self.sent_at: list[float] = []
        self.stalled = False
        self.bodies: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(self.app)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        assert body.get("stream") is True and set(body) <= {"model", "messages", "stream", "stream_options",
                                                            "max_tokens"}, body
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def event(payload: dict[str, Any]) -> None:
            await resp.write(b"data: " + orjson.dumps(payload) + b"\n\n")

        base = {"id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body["model"]}
        for k in range(CHUNKS):
            delta = {"role": "assistant", "content": f"w{k} "} if k == 0 else {"content": f"w{k} "}
            self.sent_at.append(time.monotonic())
            await event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if self.stalled:
                continue
            try:
                await asyncio.wait_for(self.received[k].wait(), 5)
            except TimeoutError:
                self.stalled = True  # the client did not get chunk k: someone is holding it back
        await event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await event({**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": CHUNKS,
                                                          "total_tokens": 3 + CHUNKS}})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def read_events(resp: Any, on_content: Any = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            break
        payload = orjson.loads(line[6:])
        events.append(payload)
        if on_content is not None:
            on_content(payload)
    return events


async def test_stream_chunks_pass_through_as_the_upstream_sends_them(gateways, http):
    upstream = PacedUpstream()
    await upstream.start()
    try:
        gw = await gateways([{"name": "paced", "url": upstream.url, "type": "vllm", "models": ["m"]}])
        arrived: list[float] = []

        def on_content(payload: dict[str, Any]) -> None:
            choices = payload.get("choices") or []
            if choices and choices[0]["delta"].get("content"):
                k = len(arrived)
                arrived.append(time.monotonic())
                upstream.received[k].set()  # only now may the upstream send the next chunk

        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.post(f"{gw.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            await read_events(resp, on_content)
    finally:
        await upstream.stop()
    assert not upstream.stalled, "a chunk reached the client only after the upstream sent the next one"
    assert len(arrived) == CHUNKS
    # each chunk arrived after the upstream sent it and before it sent the next
    for k in range(CHUNKS):
        assert upstream.sent_at[k] <= arrived[k]
        if k + 1 < CHUNKS:
            assert arrived[k] <= upstream.sent_at[k + 1]
    print(f"\nchunk arrival after upstream send (ms): "
          f"{[round((a - s) * 1000, 2) for a, s in zip(arrived, upstream.sent_at, strict=True)]}")


async def test_the_usage_only_chunk_reaches_only_clients_that_asked_for_it(fakes, gateways, http, redis):
    fake = await fakes("local", ("m",), stream_chunks=4)
    gw = await gateways([backend_for(fake)])
    url = f"{gw.url}/v1/chat/completions"
    base = {"model": "m", "messages": [{"role": "user", "content": "count me"}], "stream": True}

    async with http.post(url, json=base) as resp:
        plain = await read_events(resp)
    # the gateway asked upstream for usage (to bill the request)...
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    # ...but this client did not: no usage-only chunk, no usage anywhere
    assert plain and all(e["choices"] for e in plain), plain[-2:]
    assert all(e.get("usage") is None for e in plain)

    async with http.post(url, json={**base, "stream_options": {"include_usage": True}}) as resp:
        asked = await read_events(resp)
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] > 0
    assert all(e["choices"] for e in asked[:-1])

    # both were billed from the upstream's usage, whether the client saw it or not
    await eventually(lambda: gw.node.telemetry.buffered == 0)
    assert len(gw.records) == 2, gw.records
    assert {r.completion_tokens for r in gw.records} == {asked[-1]["usage"]["completion_tokens"]}
