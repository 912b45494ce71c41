"""Hostile clients against a real gateway over loopback HTTP: none may stall or fool the replica.

Each test reproduces one finding of the security review (issue 11) and fails on the code before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import statistics
import time

import orjson

from nexus.core.globs import MAX_MODEL_NAME_LENGTH
from tests.harness import eventually
from tests.router_node.conftest import backend_for
from tests.router_node.rawhttp import RawResponse, RawServer, closed, connect, read_response, request_head

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}


def chat(model: str = "m", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


async def test_glob_matching_cannot_stall_the_gateway(fakes, gateways, http):
    """Finding 1: backtracking regexes let one request hold the event loop for minutes."""
    local = await fakes("local", ("m",))
    policies = [
        {"model_pattern": "*llama*70b*", "privacy": "restricted"},
        {"model_pattern": "*a" * 15 + "*b", "min_tier": 1},  # 15 stars: hours per model with backtracking
    ]
    gw = await gateways([backend_for(local)], routing={"policies": policies})

    async def post(model: str) -> tuple[int, dict]:
        async with http.post(gw.url + CHAT, data=chat(model), headers=JSON) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def health() -> int:
        async with http.get(gw.url + "/health") as resp:
            return resp.status

    # a name within the length bound, matched against the 15-star pattern, while /health keeps answering
    (status, body), health_status = await asyncio.gather(post("a" * 200), health())
    assert health_status == 200
    assert status == 404 and body["error"]["param"] == "model", body

    # a 1 MB model name is refused before any matching, naming the field and the limit
    status, body = await post("llama" * 200_000)
    assert status == 400, body
    assert body["error"]["param"] == "model"
    assert str(MAX_MODEL_NAME_LENGTH) in body["error"]["message"]
    status, _ = await post("m" * MAX_MODEL_NAME_LENGTH)  # at the bound: routed (unknown model)
    assert status == 404


# ------------------------------------------------------------------------------------------------------
# 2. HTTP limits: head size and count, head/body/idle timeouts, a connection cap, concurrent requests
# ------------------------------------------------------------------------------------------------------

LIMITS = {"max_header_bytes": 16384, "max_headers": 50}


async def test_request_heads_are_bounded_in_size_and_count(fakes, gateways):
    local = await fakes("local", ("m",))
    gw = await gateways([backend_for(local)], server=LIMITS)
    body = chat()

    async def ask(head: bytes) -> RawResponse | None:
        reader, writer = await connect(gw.port)
        try:
            writer.write(head)
            await writer.drain()
            response = await read_response(reader)
            assert await closed(reader)
            return response
        finally:
            writer.close()

    cases = {
        "one 1 MB header": ({"X-Big": "a" * (1 << 20)}, "server.max_header_bytes (16384)"),
        "20,000 headers": ({f"X-H{i}": "1" for i in range(20_000)}, "server.max_header"),
        "60 small headers": ({f"X-H{i}": "1" for i in range(60)}, "server.max_headers (50)"),
        "a 20 KB URL": ({}, "server.max_header_bytes (16384)"),
    }
    for case, (headers, fragment) in cases.items():
        path = CHAT + ("?" + "q" * 20_000 if "URL" in case else "")
        response = await ask(request_head("POST", path, headers, body) + body)
        assert response is not None and response.status == 431, case
        assert fragment in orjson.loads(response.body)["error"]["message"], case

    # within the limits: served (a 12 KB header, 40 headers)
    headers = {"X-Fine": "b" * 12_000, **{f"X-H{i}": "1" for i in range(36)}}
    reader, writer = await connect(gw.port)
    try:
        writer.write(request_head("POST", CHAT, headers, body) + body)
        response = await read_response(reader)
        assert response is not None and response.status == 200, response
    finally:
        writer.close()


async def test_an_endless_header_is_cut_off_at_the_limit(fakes, gateways):
    """Unfinished heads used to be buffered without bound (400 MB over 4 connections: +400 MB RSS)."""
    local = await fakes("local", ("m",))
    gw = await gateways([backend_for(local)], server=LIMITS)

    async def bomb() -> int:
        reader, writer = await connect(gw.port)
        answer = asyncio.ensure_future(read_response(reader))
        sent = 0
        try:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Bomb: ")
            chunk = b"z" * 65536
            with contextlib.suppress(ConnectionError):
                while sent < 64 << 20 and not answer.done():
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
            response = await answer
            assert response is not None and response.status == 431
            assert "server.max_header_bytes" in orjson.loads(response.body)["error"]["message"]
            assert await closed(reader)
            return sent
        finally:
            answer.cancel()
            writer.close()

    sent = await asyncio.gather(*(bomb() for _ in range(4)))
    # answered long before 64 MB each: the server refused once the head passed the limit
    assert all(s < 16 << 20 for s in sent), sent


TIMEOUTS = {"header_timeout_seconds": 0.5, "body_timeout_seconds": 0.5, "keepalive_timeout_seconds": 0.5}


async def test_slow_idle_and_short_requests_are_timed_out(fakes, gateways):
    """Slowloris heads, bodies shorter than their Content-Length, silent and idle kept-alive connections
    were held for ever; each is now answered 408 (or closed when it sent nothing) within its timeout."""
    local = await fakes("local", ("m",))
    gw = await gateways([backend_for(local)], server=TIMEOUTS)
    body = chat()

    async def slowloris() -> RawResponse | None:
        reader, writer = await connect(gw.port)
        try:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            answer = asyncio.ensure_future(read_response(reader))
            with contextlib.suppress(ConnectionError):
                while not answer.done():  # one header byte at a time, as slowly as it dares
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.wait({answer}, timeout=0.05)
            return await answer
        finally:
            writer.close()

    async def short_body() -> RawResponse | None:
        reader, writer = await connect(gw.port)
        try:
            writer.write(request_head("POST", CHAT, {"Content-Length": str(len(body) + 10)}) + body)
            return await read_response(reader)
        finally:
            writer.close()

    async def silent() -> RawResponse | None:
        reader, writer = await connect(gw.port)
        try:
            return await read_response(reader)
        finally:
            writer.close()

    async def idle_after_a_request() -> RawResponse | None:
        reader, writer = await connect(gw.port)
        try:
            writer.write(request_head("POST", CHAT, {}, body) + body)
            first = await read_response(reader)
            assert first is not None and first.status == 200 and "close" not in first.headers.get("connection", "")
            return await read_response(reader)
        finally:
            writer.close()

    loris, short, quiet, idle = await asyncio.wait_for(
        asyncio.gather(slowloris(), short_body(), silent(), idle_after_a_request()), timeout=30
    )
    assert loris is not None and loris.status == 408
    assert "server.header_timeout_seconds (0.5 s)" in orjson.loads(loris.body)["error"]["message"]
    assert short is not None and short.status == 408
    assert "server.body_timeout_seconds (0.5 s)" in orjson.loads(short.body)["error"]["message"]
    assert quiet is None  # closed without a word
    assert idle is None
    await eventually(lambda: gw.node.active == 0 and gw.node.load.total() == 0)


async def test_normal_clients_are_served_while_200_slowloris_connections_are_open(fakes, gateways, http):
    local = await fakes("local", ("m",))
    gw = await gateways([backend_for(local)], server={"header_timeout_seconds": 60})
    writers = []
    try:
        for _ in range(200):
            _, writer = await connect(gw.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            writers.append(writer)
        for w in writers:
            await w.drain()
        latencies = []
        for _ in range(50):
            t0 = time.perf_counter()
            async with http.post(gw.url + CHAT, data=chat(), headers=JSON) as resp:
                assert resp.status == 200
                await resp.read()
            latencies.append(time.perf_counter() - t0)
        print(f"normal requests beside 200 slowloris connections: p50 {statistics.median(latencies) * 1000:.2f} ms")
        assert all(not w.is_closing() for w in writers)  # the slow ones are still open: this was concurrent
    finally:
        for w in writers:
            w.close()


async def test_connections_beyond_the_cap_get_a_fast_503(fakes, gateways, http):
    local = await fakes("local", ("m",))
    gw = await gateways([backend_for(local)], server={"max_connections": 20, "header_timeout_seconds": 60})
    idle = [await connect(gw.port) for _ in range(20)]
    try:
        reader, writer = await connect(gw.port)
        writer.write(request_head("POST", CHAT, {}, chat()) + chat())
        response = await asyncio.wait_for(read_response(reader), timeout=10)
        writer.close()
        assert response is not None and response.status == 503
        assert response.headers["retry-after"] == "1"
        assert "server.max_connections" in orjson.loads(response.body)["error"]["message"]
    finally:
        for _, w in idle:
            w.close()

    async def served() -> bool:
        async with http.post(gw.url + CHAT, data=chat(), headers=JSON) as resp:
            return resp.status == 200

    await eventually(served)


async def test_max_concurrent_requests_is_enforced(gateways, http):
    release = asyncio.Event()
    held = 0

    async def slow_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal held
        await reader.readuntil(b"\r\n\r\n")
        held += 1
        await release.wait()
        body = orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()

    upstream = await RawServer(slow_backend).start()
    try:
        backend = {"name": "slow", "url": upstream.url, "type": "vllm", "models": ["m"], "max_concurrency": 100}
        gw = await gateways([backend], server={"max_concurrent_requests": 2})

        async def post() -> tuple[int, dict[str, str], bytes]:
            async with http.post(gw.url + CHAT, data=chat(), headers=JSON) as resp:
                return resp.status, dict(resp.headers), await resp.read()

        first = [asyncio.ensure_future(post()) for _ in range(2)]
        await eventually(lambda: held == 2)
        status, headers, raw = await post()
        assert status == 503 and headers["Retry-After"] == "1", raw
        err = orjson.loads(raw)["error"]
        assert err["code"] == "replica_overloaded" and "max_concurrent_requests (2)" in err["message"]
        async with http.get(gw.url + "/health") as resp:
            assert resp.status == 200  # operational endpoints are not counted
        release.set()
        assert [s for s, _, _ in await asyncio.gather(*first)] == [200, 200]
        assert (await post())[0] == 200
    finally:
        release.set()
        await upstream.stop()


# ------------------------------------------------------------------------------------------------------
# 7. bounded numbers, JSON bodies only, keys for /v1/models (and /metrics when asked)
# ------------------------------------------------------------------------------------------------------


async def test_numbers_are_bounded_and_typed_and_bodies_must_be_json(fakes, gateways, http):
    local = await fakes("local", ("m",))
    gw = await gateways([backend_for(local)])
    cases = [
        (chat(max_tokens=2**64 - 1), JSON, 400, "max_tokens"),
        (chat(max_completion_tokens=10**9), JSON, 400, "max_completion_tokens"),
        (chat(temperature="0.5"), JSON, 400, "temperature"),
        (chat(top_p="1"), JSON, 400, "top_p"),
        (chat(), {"Content-Type": "text/plain"}, 415, "Content-Type"),  # a cross-site form post needs no preflight
        (chat(), {"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
        (chat(), {}, 415, "Content-Type"),
    ]
    for body, headers, status, param in cases:
        async with http.post(gw.url + CHAT, data=body, headers=headers,
                             skip_auto_headers=["Content-Type"]) as resp:
            err = orjson.loads(await resp.read())["error"]
            assert resp.status == status and err["param"] == param, (body, headers, err)
    assert local.requests == []  # none of them reached the backend
    async with http.post(gw.url + CHAT, data=chat(temperature=0.5, max_tokens=100),
                         headers={"Content-Type": "Application/JSON; charset=utf-8"}) as resp:
        assert resp.status == 200


async def test_models_need_a_key_when_keys_are_set_and_metrics_when_configured(fakes, gateways, http):
    local = await fakes("local", ("m",))
    digest = hashlib.sha256(b"sk-good").hexdigest()
    gw = await gateways([backend_for(local)], server={"api_keys": [f"sha256:{digest}"]})
    good = {"Authorization": "Bearer sk-good"}
    async with http.get(gw.url + "/v1/models") as resp:
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"
    async with http.get(gw.url + "/v1/models", headers={"Authorization": "Bearer sk-bad"}) as resp:
        assert resp.status == 401
    async with http.get(gw.url + "/v1/models", headers=good) as resp:
        assert resp.status == 200 and [m["id"] for m in (await resp.json())["data"]] == ["m"]
    async with http.get(gw.url + "/metrics") as resp:
        assert resp.status == 200  # default: scrapers need no key

    keyed = await gateways([backend_for(local)], node_id="keyed",
                           server={"api_keys": [f"sha256:{digest}"], "metrics_require_key": True,
                                   "models_require_key": False})
    async with http.get(keyed.url + "/metrics") as resp:
        assert resp.status == 401
    async with http.get(keyed.url + "/metrics", headers=good) as resp:
        assert resp.status == 200 and "nexus_requests" in await resp.text()
    async with http.get(keyed.url + "/v1/models") as resp:
        assert resp.status == 200
