"""Broken and misbehaving upstreams against a real gateway over loopback HTTP: none may fool, stall or leak
through the replica. Each upstream is a small raw asyncio server written for its test (tests/router_node/
rawhttp.py); each test reproduces one finding of the security review (issue 11) and fails before its fix.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
import pytest
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from nexus.core import keys
from nexus.core.config import ServerConfig
from nexus.core.gateway_errors import UpstreamError
from nexus.core.model import Backend, BackendType, HealthState, Zone
from nexus.core.secrets import SecretConfig
from nexus.core.snapshot import HealthObservation
from nexus.core.telemetry_store import TelemetryRecord
from nexus.router_node.breaker import Breakers
from nexus.router_node.upstream import Upstream
from tests.harness import eventually
from tests.router_node.rawhttp import RawServer, chat_completion, connect, read_request, request_head, response
from tests.stored import put_health

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}


def chat(model: str = "m", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def backend(server: RawServer, name: str = "solo", **extra: object) -> dict:
    return {"name": name, "url": server.url, "type": "vllm", "models": ["m"], "max_concurrency": 100, **extra}


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


async def post(http, gw, body: bytes | None = None, headers: dict | None = None) -> tuple[int, CIMultiDict, dict]:
    async with http.post(gw.url + CHAT, data=body or chat(), headers={**JSON, **(headers or {})}) as resp:
        return resp.status, resp.headers.copy(), orjson.loads(await resp.read())


# ------------------------------------------------------------------------------------------------------
# 8. a circuit breaker per backend on each replica
# ------------------------------------------------------------------------------------------------------


async def test_a_dead_only_candidate_gets_fast_503s_and_recovers_within_a_second(gateways, http, redis):
    mode = {"broken": True}
    attempts = []

    async def flaky(reader, writer):
        request = await read_request(reader)
        attempts.append(request.path)
        writer.write(response(500, b'{"error": "down"}') if mode["broken"] else response(200, chat_completion()))
        await writer.drain()

    upstream = await RawServer(flaky).start()
    try:
        gw = await gateways([backend(upstream)], quality={"breaker_failures": 5, "breaker_retry_seconds": 1.0})
        clock = Clock(time.time())
        gw.node.breakers = Breakers(gw.node.breakers.settings, clock)  # the breaker's time is the test's

        # five failures reach the backend (502), then the circuit opens: fast 503s, no upstream attempt
        for _ in range(5):
            status, headers, body = await post(http, gw)
            assert status == 502, body
        assert headers["Retry-After"] == "1"  # the fifth opened the circuit: the client learns when to retry
        for _ in range(20):
            status, headers, body = await post(http, gw, headers={"X-Nexus-Explain": "true"})
            assert status == 503 and headers["Retry-After"] == "1", body
            reason = body["context"]["rejection_reasons"][0]
            assert reason["reconciler"] == "CircuitReconciler" and reason["agent_id"] == "solo"
            assert "circuit open: 5 failed attempts in a row" in reason["reason"]
            assert "next trial in" in reason["reason"]
            steps = {s["reconciler"]: s["excluded"] for s in body["context"]["explain"]["steps"]}
            assert [x["agent_id"] for x in steps["CircuitReconciler"]] == ["solo"]
        assert len(attempts) == 5
        assert await metric(http, gw, "nexus_circuit_open", backend="solo") == 1

        # a second later one request is the half-open trial; it fails, the circuit opens again
        clock.now += 1.0
        assert (await post(http, gw))[0] == 502
        assert (await post(http, gw))[0] == 503
        assert len(attempts) == 6

        # the backend is back: the first request after the next trial time is served, and so is the rest
        mode["broken"] = False
        clock.now += 1.0
        statuses = [(await post(http, gw))[0] for _ in range(10)]
        assert statuses == [200] * 10
        assert len(attempts) == 16

        # the health worker now calls it unhealthy: this replica defers to it (no evidence of its own since)
        await put_health(redis, "solo", HealthObservation(HealthState.UNHEALTHY, clock.now + 0.5))
        await eventually(lambda: gw.node.snapshot.backends["solo"].health is HealthState.UNHEALTHY)
        status, headers, body = await post(http, gw)
        assert status == 503
        assert body["context"]["rejection_reasons"][0]["reconciler"] == "RequestAnalyzer"
        assert "failing health checks" in body["context"]["rejection_reasons"][0]["reason"]
        assert len(attempts) == 16
    finally:
        await upstream.stop()


async def test_a_replica_that_saw_a_backend_fail_overrides_a_stale_unhealthy_verdict(gateways, http, redis):
    """The soak's 9-11 s of 503s after recovery: the worker's recovery threshold kept a healthy backend out."""
    mode = {"broken": True}
    attempts = []

    async def flaky(reader, writer):
        await read_request(reader)
        attempts.append(mode["broken"])
        writer.write(response(503, b"{}") if mode["broken"] else response(200, chat_completion()))
        await writer.drain()

    upstream = await RawServer(flaky).start()
    try:
        gw = await gateways([backend(upstream)], quality={"breaker_failures": 5, "breaker_retry_seconds": 1.0})
        clock = Clock(time.time())
        gw.node.breakers = Breakers(gw.node.breakers.settings, clock)
        assert (await post(http, gw))[0] == 502  # one failure seen here
        await put_health(redis, "solo", HealthObservation(HealthState.UNHEALTHY, clock.now))
        await eventually(lambda: gw.node.snapshot.backends["solo"].health is HealthState.UNHEALTHY)

        # the worker's verdict plus this replica's own failure: a trial is due now, it fails, and the circuit is
        # open for a second, whose rejection the worker's reason gives (both agree: do not use it)
        assert (await post(http, gw))[0] == 502
        status, _, body = await post(http, gw)
        assert status == 503 and body["context"]["rejection_reasons"][0]["reconciler"] == "RequestAnalyzer"
        mode["broken"] = False
        clock.now += 1.0
        status, headers, body = await post(http, gw, headers={"X-Nexus-Explain": "true"})
        assert status == 200, body
        assert "fails its health checks, but this router node saw it answer" in headers["X-Nexus-Warning"]
        assert body["nexus_explain"]["rejection_reasons"] == []
        # traffic flows although the worker still says unhealthy (and repeats it), until its probes agree
        await put_health(redis, "solo", HealthObservation(HealthState.UNHEALTHY, clock.now + 0.5))
        assert [(await post(http, gw))[0] for _ in range(5)] == [200] * 5
        assert attempts == [True, True, False, False, False, False, False, False]
    finally:
        await upstream.stop()


class Recorder:
    """A raw upstream answering with `answer(request) -> bytes`, keeping every request it got."""

    def __init__(self, answer) -> None:
        self.requests = []
        self._answer = answer
        self.server = RawServer(self._handle)

    async def _handle(self, reader, writer):
        while True:
            request = await read_request(reader)
            self.requests.append(request)
            out = self._answer(request)
            if isinstance(out, list):  # a stream: send the pieces one by one
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
                for piece in out:
                    writer.write(piece)
                    await writer.drain()
                return
            writer.write(out)
            await writer.drain()

    async def __aenter__(self) -> Recorder:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url


def sse_chunk(text: str | None = None, usage: dict | None = None, finish: str | None = None) -> bytes:
    choices = [] if text is None and finish is None else [
        {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def ok(request) -> bytes | list[bytes]:
    """A well-behaved OpenAI-compatible answer, JSON or a stream as asked."""
    if orjson.loads(request.body).get("stream"):
        return [b"data: " + sse_chunk("served by spare") + b"\n\n", b"data: " + sse_chunk(finish="stop") + b"\n\n",
                b"data: " + sse_chunk(usage={"prompt_tokens": 3, "completion_tokens": 4}) + b"\n\n",
                b"data: [DONE]\n\n"]
    return response(200, chat_completion("served by spare", usage={"prompt_tokens": 3, "completion_tokens": 4}))


async def records(gw, redis) -> list[TelemetryRecord]:
    """What the node recorded, once flushed (Redis keeps only their sums)."""
    await eventually(lambda: gw.node.telemetry.buffered == 0)
    return list(gw.records)


async def metric(http, gw, name: str, **labels: str) -> float | None:
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


# ------------------------------------------------------------------------------------------------------
# 3. redirects are never followed; a backend's key only goes to its configured origin
# ------------------------------------------------------------------------------------------------------


async def test_redirects_are_failures_and_credentials_stay_home(gateways, http, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-backend-secret")
    async with Recorder(ok) as thief, Recorder(ok) as spare:
        def redirect(_request) -> bytes:
            return response(307, b"", headers={"Location": f"{thief.url}/v1/messages"})

        async with Recorder(redirect) as claude, Recorder(redirect) as oai:
            gw = await gateways([
                {"name": "claude", "url": claude.url, "type": "anthropic", "api_key_env": "TEST_KEY",
                 "models": ["m"], "priority": 0},
                {"name": "oai", "url": oai.url, "type": "openai", "api_key_env": "TEST_KEY", "models": ["m"],
                 "priority": 1},
                {"name": "spare", "url": spare.url, "type": "vllm", "models": ["m"], "priority": 5},
            ], routing={"strategy": "priority_only"})
            status, headers, body = await post(http, gw)
            assert status == 200 and headers["X-Nexus-Backend"] == "spare", body
            assert headers["X-Nexus-Route-Reason"] == "failover"
            assert thief.requests == []  # neither the prompt nor the key went to the other origin
            assert claude.requests[0].headers["x-api-key"] == "sk-backend-secret"  # its own origin: fine
            assert oai.requests[0].headers["authorization"] == "Bearer sk-backend-secret"


async def test_a_redirecting_only_candidate_is_a_502(gateways, http, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-backend-secret")
    async with Recorder(ok) as thief:
        def redirect(_request) -> bytes:
            return response(302, b"", headers={"Location": f"{thief.url}/v1/messages"})

        async with Recorder(redirect) as claude:
            gw = await gateways([{"name": "claude", "url": claude.url, "type": "anthropic",
                                  "api_key_env": "TEST_KEY", "models": ["m"]}])
            for stream in (False, True):
                status, _, body = await post(http, gw, chat(stream=stream))
                assert status == 502 and "redirects are never followed" in body["error"]["message"], body
                assert "sk-backend-secret" not in orjson.dumps(body).decode()
            assert thief.requests == [] and len(claude.requests) == 2


async def test_a_key_is_never_sent_to_another_origin(monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-backend-secret")
    async with Recorder(ok) as home, Recorder(ok) as elsewhere:
        # the secret may go to 127.0.0.1 (its host list); the other server is on the same host, another port:
        # only the origin check (scheme, host and port of the configured URL) keeps the key from it
        upstream = Upstream(ServerConfig(), {"claude-key": SecretConfig(env="TEST_KEY", hosts=["127.0.0.1"])})
        await upstream.start()
        try:
            b = Backend("claude", home.url, BackendType.ANTHROPIC, Zone.OPEN, secret="claude-key")
            with pytest.raises(UpstreamError, match="credentials to an origin other than its configured URL's"):
                await upstream.request(b, f"{elsewhere.url}/v1/messages", b"{}", 5.0)
            (await upstream.request(b, f"{home.url}/v1/messages", b"{}", 5.0)).release()
        finally:
            await upstream.close()
        assert elsewhere.requests == [] and len(home.requests) == 1


# ------------------------------------------------------------------------------------------------------
# 4. backend output is checked before the client's first byte; usage before it is billed
# ------------------------------------------------------------------------------------------------------

HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
BAD_BODIES = {
    "html": response(200, HTML, "text/html"),
    "html-declared-json": response(200, HTML),
    "truncated-json": response(200, chat_completion()[:40]),
    "json-array": response(200, b"[1, 2]"),
    "error-object": response(200, b'{"error": {"message": "model crashed"}}'),
    "no-choices": response(200, b'{"id": "x", "object": "chat.completion"}'),
}
BAD_STREAMS = {
    "html-as-sse": [HTML],
    "html-content-type": None,  # answered below with text/html
    "first-event-not-json": [b"data: <html>\n\n", b"data: [DONE]\n\n"],
    "first-event-error": [b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'],
    "done-before-anything": [b"data: [DONE]\n\n"],
}


async def test_malformed_answers_fail_over_and_are_never_a_success(gateways, http, redis):
    bodies = iter([*BAD_BODIES.values(), *(
        response(200, HTML, "text/html") if s is None else s for s in BAD_STREAMS.values())])
    async with Recorder(lambda _r: next(bodies)) as liar, Recorder(ok) as spare:
        gw = await gateways([backend(liar, "liar", priority=0), backend(spare, "spare", priority=5)],
                            routing={"strategy": "priority_only"},
                            quality={"eject_after_failures": 100, "breaker_failures": 100})
        for case in [*BAD_BODIES, *BAD_STREAMS]:
            stream = case in BAD_STREAMS
            async with http.post(gw.url + CHAT, data=chat(stream=stream), headers=JSON) as resp:
                raw = await resp.read()
                assert resp.status == 200 and resp.headers["X-Nexus-Backend"] == "spare", (case, raw[:200])
                assert resp.headers["X-Nexus-Route-Reason"] == "failover", case
                assert HTML not in raw and b"<html>" not in raw, case
        assert len(liar.requests) == len(BAD_BODIES) + len(BAD_STREAMS)
        outcomes = {(r.backend, r.outcome) for r in await records(gw, redis)}
        assert ("liar", "ok") not in outcomes and ("liar", "upstream_error") in outcomes
        assert await metric(http, gw, "nexus_failovers_total", backend="liar") == len(liar.requests)
        # malformed, all but two: the HTML "stream" just ends without an event, and the error event is the
        # backend's own report (both still fail over)
        invalid = await metric(http, gw, "nexus_upstream_invalid_responses_total", backend="liar")
        assert invalid == len(liar.requests) - 2


async def test_a_malformed_only_candidate_is_a_502_envelope(gateways, http):
    async with Recorder(lambda _r: response(200, HTML, "text/html")) as liar:
        gw = await gateways([backend(liar, "liar")])
        for stream in (False, True):
            status, _, body = await post(http, gw, chat(stream=stream))
            assert status == 502 and body["error"]["code"] == "upstream_failed", body
            assert "not JSON" in body["error"]["message"] or "text/html" in body["error"]["message"]


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param({"prompt_tokens": "abc", "completion_tokens": 5}, id="string-count"),
        pytest.param({"prompt_tokens": -3_999_990_000, "completion_tokens": -5}, id="negative"),
        pytest.param({"prompt_tokens": 10**12, "completion_tokens": 1}, id="absurd"),
        pytest.param({"prompt_tokens": 1.5, "completion_tokens": True}, id="float-and-bool"),
        pytest.param("lots", id="not-an-object"),
    ],
)
async def test_invalid_usage_is_billed_from_the_estimate(gateways, http, redis, usage):
    text = "x" * 400  # 100 tokens of answer
    answer = response(200, chat_completion(text, usage=usage))
    async with Recorder(lambda _r: answer) as backend_:
        cfg = backend(backend_, "cheap", type="openai", api_key_env="TEST_KEY",
                      models=[{"name": "m", "input_usd_per_1m": 1000.0, "output_usd_per_1m": 1000.0}])
        gw = await gateways([cfg])
        status, _, body = await post(http, gw)
        assert status == 200 and body["choices"][0]["message"]["content"] == text, body
        (record,) = [r for r in await records(gw, redis) if r.backend == "cheap"]
        assert record.estimated and record.outcome == "ok"
        assert record.prompt_tokens >= 0 and record.completion_tokens == 100  # from the answer's length
        assert 0 < record.cost_usd < 1.0
        assert await metric(http, gw, "nexus_usage_estimated_total", backend="cheap", reason="invalid") == 1
        spend = await redis.hget(keys.telemetry_spend(gw.node.telemetry.periods()["global"]), "global")
        assert float(spend) == pytest.approx(record.cost_usd)  # the live spend the budget sees


# ------------------------------------------------------------------------------------------------------
# 5. SSE framing as the spec says (CRLF, LF, CR; comments; multi-line data), OpenAI and Anthropic alike
# ------------------------------------------------------------------------------------------------------


def split_data(payload: bytes, newline: bytes) -> bytes:
    """One event whose JSON spans two `data:` lines (split after its first comma, where JSON allows it)."""
    head, tail = payload.split(b",", 1)
    return b"data: " + head + b"," + newline + b"data: " + tail + newline + newline


async def read_stream_in_steps(http, gw, body: bytes, first: bytes, gate: asyncio.Event) -> bytes:
    """POST a stream; check `first` reaches the client while the upstream is held at `gate`, then read on."""
    async with http.post(gw.url + CHAT, data=body, headers=JSON) as resp:
        assert resp.status == 200, await resp.read()
        seen = b""
        while first not in seen:
            chunk = await asyncio.wait_for(resp.content.readany(), 10)
            assert chunk, seen
            seen += chunk
        gate.set()  # only now does the upstream send the rest: the first bytes came through on their own
        return seen + await resp.read()


def assert_clean_end(raw: bytes) -> str:
    """The stream's text; it ends in exactly one [DONE], with no error event anywhere."""
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"[DONE]") == 1, raw[-300:]
    assert b'"error"' not in raw, raw
    text = ""
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in orjson.loads(event[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text


async def test_openai_streams_with_crlf_cr_comments_and_multiline_data(gateways, http, redis):
    gate = asyncio.Event()

    async def sse(reader, writer):
        while True:
            await read_request(reader)
            gate.clear()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")

            def send(data: bytes) -> None:
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))

            send(b": keep-alive\r\n\r\n" + b"data: " + sse_chunk("Hel") + b"\r\n\r\n")  # sse-starlette's CRLF
            await writer.drain()
            await gate.wait()
            send(split_data(sse_chunk("lo, "), b"\r"))  # CR line ends, data over two lines
            send(b"data: " + sse_chunk("world") + b"\n\n" + b": comment\n")  # LF, and a comment line
            send(b"\ndata: " + sse_chunk(finish="stop") + b"\r\n\r")  # a CRLF split over two chunks
            await writer.drain()
            send(b"\n" + b"data: " + sse_chunk(usage={"prompt_tokens": 7, "completion_tokens": 3}) + b"\r\n\r\n")
            send(b"data: [DONE]\r\n\r\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    upstream = await RawServer(sse).start()
    try:
        gw = await gateways([backend(upstream, "starlette")])
        for _ in range(2):  # a second time: the backend was not ejected or counted as failing
            raw = await read_stream_in_steps(http, gw, chat(stream=True), b"Hel", gate)
            assert assert_clean_end(raw) == "Hello, world"
            assert b'"usage"' not in raw  # the gateway asked for usage; the client did not: not passed on
        recs = [r for r in await records(gw, redis) if r.backend == "starlette"]
        got = [(r.outcome, r.completion_tokens, r.prompt_tokens, r.estimated) for r in recs]
        assert got == [("ok", 3, 7, False)] * 2
        assert gw.node.breakers.view().open == {}
    finally:
        await upstream.stop()


async def test_anthropic_streams_with_crlf_and_comments(gateways, http, redis, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test")
    gate = asyncio.Event()

    def ev(name: str, data: dict, nl: bytes = b"\r\n") -> bytes:
        return b"event: " + name.encode() + nl + b"data: " + orjson.dumps(data) + nl + nl

    async def claude(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        writer.write(ev("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "usage": {"input_tokens": 11, "output_tokens": 1}}}))
        writer.write(b": ping\r\n\r\n" + ev("content_block_delta", {
            "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}}))
        await writer.drain()
        await gate.wait()
        writer.write(ev("content_block_delta", {
            "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}}, b"\r"))
        writer.write(ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                          "usage": {"output_tokens": 2}}, b"\n"))
        writer.write(ev("message_stop", {"type": "message_stop"}))
        await writer.drain()

    upstream = await RawServer(claude).start()
    try:
        gw = await gateways([backend(upstream, "claude", type="anthropic", api_key_env="TEST_KEY")])
        raw = await read_stream_in_steps(http, gw, chat(stream=True), b"Hi ", gate)
        assert assert_clean_end(raw) == "Hi there"
        (rec,) = [r for r in await records(gw, redis) if r.backend == "claude"]
        assert (rec.outcome, rec.prompt_tokens, rec.completion_tokens, rec.estimated) == ("ok", 11, 2, False)
    finally:
        await upstream.stop()


# ------------------------------------------------------------------------------------------------------
# 6. stream_options: learned per backend, never an error for a field the client did not send
# ------------------------------------------------------------------------------------------------------

KNOWN_FIELDS = {"model", "messages", "stream", "max_tokens", "temperature"}


def strict(request) -> bytes | list[bytes]:
    """An OpenAI-compatible server that refuses every field it does not know, as some do."""
    body = orjson.loads(request.body)
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        err = {"message": f"Unrecognized request argument supplied: {unknown[0]}", "type": "invalid_request_error",
               "param": None, "code": None}
        return response(400, orjson.dumps({"error": err}))
    if body.get("stream"):
        return [b"data: " + sse_chunk("x" * 40) + b"\n\n", b"data: " + sse_chunk(finish="stop") + b"\n\n",
                b"data: [DONE]\n\n"]
    return response(200, chat_completion("y" * 40))


async def test_a_backend_refusing_stream_options_is_learned_and_billed_from_the_estimate(gateways, http, redis):
    async with Recorder(strict) as upstream:
        gw = await gateways([backend(upstream, "strict")])
        raw = await (await http.post(gw.url + CHAT, data=chat(stream=True), headers=JSON)).read()
        assert assert_clean_end(raw) == "x" * 40
        sent = [orjson.loads(r.body) for r in upstream.requests]
        assert ["stream_options" in b for b in sent] == [True, False]  # refused once, then asked without it

        raw = await (await http.post(gw.url + CHAT, data=chat(stream=True), headers=JSON)).read()
        assert assert_clean_end(raw) == "x" * 40
        assert len(upstream.requests) == 3 and "stream_options" not in orjson.loads(upstream.requests[2].body)

        recs = [r for r in await records(gw, redis) if r.backend == "strict" and r.outcome == "ok"]
        # no usage in these streams: billed from the text relayed (40 chars, 10 tokens), and saying so
        assert [(r.estimated, r.completion_tokens) for r in recs] == [(True, 10)] * 2
        assert await metric(http, gw, "nexus_usage_estimated_total", backend="strict", reason="missing") == 2

        # the client's own stream_options is the client's to have refused
        status, _, body = await post(http, gw, chat(stream=True, stream_options={"include_usage": True}))
        assert status == 400 and "stream_options" in body["error"]["message"]

        # the other replicas learn it from observed state without a refused request of their own
        other = await gateways([backend(upstream, "strict")], node_id="other-replica")
        await eventually(lambda: "strict" in other.node.upstream.no_stream_options)
        before = len(upstream.requests)
        raw = await (await http.post(other.url + CHAT, data=chat(stream=True), headers=JSON)).read()
        assert assert_clean_end(raw) == "x" * 40 and len(upstream.requests) == before + 1


# ------------------------------------------------------------------------------------------------------
# 7. upstream 429 and Retry-After; a client that leaves cancels the upstream call
# ------------------------------------------------------------------------------------------------------


async def test_an_upstream_429_cools_the_backend_down_on_this_replica(gateways, http):
    async with Recorder(limited) as busy, Recorder(ok) as spare:
        gw = await gateways([backend(busy, "busy", priority=0), backend(spare, "spare", priority=5)],
                            routing={"strategy": "priority_only"})
        status, headers, _ = await post(http, gw)
        assert status == 200 and headers["X-Nexus-Backend"] == "spare"
        assert headers["X-Nexus-Route-Reason"] == "failover"
        for _ in range(5):  # cooling down: not tried again on this replica
            status, headers, _ = await post(http, gw)
            assert status == 200 and headers["X-Nexus-Route-Reason"] != "failover"
        assert len(busy.requests) == 1


def limited(_request) -> bytes:
    return response(429, b'{"error": {"message": "slow down"}}', headers={"Retry-After": "37"})


async def test_a_rate_limited_only_candidate_passes_retry_after_on(gateways, http):
    async with Recorder(limited) as alone:
        gw = await gateways([backend(alone, "alone")])
        status, headers, body = await post(http, gw)
        assert status == 429 and headers["Retry-After"] == "37", body
        assert body["error"]["code"] == "rate_limit_exceeded"
        status, headers, body = await post(http, gw)  # cooling down: a fast 503 saying why and how long
        assert status == 503 and 36 <= int(headers["Retry-After"]) <= 37, body
        reason = body["context"]["rejection_reasons"][0]["reason"]
        assert "rate-limited by the backend (HTTP 429, Retry-After 37 s)" in reason
        assert len(alone.requests) == 1


async def test_a_client_that_leaves_cancels_the_upstream_call(gateways):
    arrived, closed_upstream = asyncio.Event(), asyncio.Event()

    async def thinking(reader, writer):
        await read_request(reader)
        arrived.set()
        await reader.read()  # never answers; returns when the gateway closes the connection
        closed_upstream.set()

    upstream = await RawServer(thinking).start()
    try:
        gw = await gateways([backend(upstream, "thinker")], server={"request_timeout_seconds": 300})
        _, writer = await connect(gw.port)
        writer.write(request_head("POST", CHAT, {}, chat()) + chat())
        await writer.drain()
        await asyncio.wait_for(arrived.wait(), 10)
        assert gw.node.load.total() == 1
        writer.close()  # the client gives up
        await asyncio.wait_for(closed_upstream.wait(), 10)  # long before the 300 s timeout
        await eventually(lambda: gw.node.load.total() == 0 and gw.node.active == 0)
        assert gw.node.breakers.circuit("thinker").failures == 0  # the client left: not the backend's fault
    finally:
        await upstream.stop()
