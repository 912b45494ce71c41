"""Acceptance tests of the gateway's robustness, over real HTTP on loopback and a real Redis.

1. Bad input never yields a 500: each malformed request is a 400 (or 404/405/413) OpenAI envelope whose
   `param` names the field; a hypothesis property posts 200 fuzzed bodies to one running gateway.
2. In-flight accounting returns to zero, locally and in the cluster gauge in Redis, after hundreds of
   client disconnects and upstream failures at concurrency ~50.
3. Redis going away mid-load: the gateway keeps answering from its snapshot, telemetry buffers, and once
   Redis is back the buffer drains so that the spend in Redis is exactly the sum of the per-request
   costs (nothing lost, nothing counted twice); a replay after a lost reply never double counts.
4. Graceful shutdown lets in-flight streams finish with [DONE]; readiness is false while draining; a
   request cut off after the grace period leaks no in-flight count; stop survives a swallowed cancel.
5. /metrics exposes the request, pipeline, exclusion, snapshot-age and budget series.

No fixed sleeps: every wait polls a condition with a deadline (`eventually`). Every process and server a
test starts, it stops (fixtures, or `finally`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from redis import exceptions as redis_exc
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregate_store import read_aggregate
from nexus.core.aggregates import Totals
from nexus.core.embedded_redis import EmbeddedRedis
from nexus.core.errors import StateUnavailable
from nexus.core.observed import read_inflight
from nexus.core.periods import BudgetCalendar, period_of
from nexus.core.snapshot import GLOBAL_SCOPE
from nexus.core.telemetry_store import TelemetryBatch, TelemetryRecord, read_live_spend, write_batch
from nexus.router_node.load import LoadTracker
from nexus.router_node.telemetry import Telemetry
from tests.clock import knobs_for, steady_period
from tests.harness import GatewayHarness, eventually, fake_backend, settings_for
from tests.router_node.conftest import backend_for

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"


def chat(model: str = "m", content: Any = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def assert_envelope(status: int, body: bytes, where: str = "") -> dict[str, Any]:
    """The body is an OpenAI error envelope; returns its `error` object."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{where}: HTTP {status} with a non-JSON body: {body[:300]!r}") from None
    assert isinstance(payload, dict) and isinstance(payload.get("error"), dict), f"{where}: {payload!r}"
    err = payload["error"]
    assert isinstance(err.get("message"), str) and err["message"], f"{where}: {err!r}"
    assert isinstance(err.get("type"), str) and err["type"], f"{where}: {err!r}"
    assert "param" in err and "code" in err, f"{where}: {err!r}"
    return err


async def scrape(http: aiohttp.ClientSession, gw: GatewayHarness) -> dict[tuple[str, tuple], float]:
    """GET /metrics as {(sample name, sorted labels): value}."""
    async with http.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sse_text(body: bytes) -> str:
    """The assistant text of an SSE chat stream."""
    text = ""
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in orjson.loads(event[6:]).get("choices") or ():
                text += choice.get("delta", {}).get("content") or ""
    return text


def sample(metrics: dict[tuple[str, tuple], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


# ------------------------------------------------------------------------------------------------------
# 1. bad input never yields a 500
# ------------------------------------------------------------------------------------------------------

_J = orjson.dumps
BAD_REQUESTS: list[tuple[str, str, str, bytes, dict[str, str], int, str | None]] = [
    # (case, method, path, body, headers, expected status, expected error.param)
    ("malformed JSON", "POST", CHAT, b'{"model": "m", "messages": [', {}, 400, None),
    ("trailing garbage", "POST", CHAT, _J(chat()) + b"}", {}, 400, None),
    ("empty body", "POST", CHAT, b"", {}, 400, None),
    ("JSON array body", "POST", CHAT, _J([chat()]), {}, 400, None),
    ("JSON string body", "POST", CHAT, b'"hello"', {}, 400, None),
    ("JSON null body", "POST", CHAT, b"null", {}, 400, None),
    ("non-UTF-8 bytes", "POST", CHAT, b'{"model": "m\xff\xfe", "messages": []}', {}, 400, None),
    ("NaN literal", "POST", CHAT, b'{"model": "m", "messages": [], "temperature": NaN}', {}, 400, None),
    ("infinite number", "POST", CHAT, b'{"model": "m", "temperature": 1e999, "messages": []}', {}, 400, None),
    ("missing messages", "POST", CHAT, _J({"model": "m"}), {}, 400, "messages"),
    ("missing model", "POST", CHAT, _J({"messages": [{"role": "user", "content": "x"}]}), {}, 400, "model"),
    ("model a number", "POST", CHAT, _J(chat(model=7)), {}, 400, "model"),  # type: ignore[arg-type]
    ("messages not a list", "POST", CHAT, _J({"model": "m", "messages": "hi"}), {}, 400, "messages"),
    ("messages empty", "POST", CHAT, _J({"model": "m", "messages": []}), {}, 400, "messages"),
    ("message not an object", "POST", CHAT, _J({"model": "m", "messages": ["hi"]}), {}, 400, "messages[0]"),
    (
        "role unknown",
        "POST",
        CHAT,
        _J({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
        {},
        400,
        "messages[0].role",
    ),
    ("role missing", "POST", CHAT, _J({"model": "m", "messages": [{"content": "x"}]}), {}, 400, "messages[0].role"),
    ("content a number", "POST", CHAT, _J(chat(content=42)), {}, 400, "messages[0].content"),
    (
        "content part without type",
        "POST",
        CHAT,
        _J(chat(content=[{"text": "x"}])),
        {},
        400,
        "messages[0].content[0].type",
    ),
    ("stream a string", "POST", CHAT, _J(chat(stream="yes")), {}, 400, "stream"),
    ("stream a number", "POST", CHAT, _J(chat(stream=1)), {}, 400, "stream"),
    (
        "stream_options.include_usage a string",
        "POST",
        CHAT,
        _J(chat(stream=True, stream_options={"include_usage": "yes"})),
        {},
        400,
        "stream_options.include_usage",
    ),
    ("max_tokens negative", "POST", CHAT, _J(chat(max_tokens=-1)), {}, 400, "max_tokens"),
    ("max_tokens zero", "POST", CHAT, _J(chat(max_tokens=0)), {}, 400, "max_tokens"),
    ("max_tokens a string", "POST", CHAT, _J(chat(max_tokens="10")), {}, 400, "max_tokens"),
    ("max_tokens a float", "POST", CHAT, _J(chat(max_tokens=1.5)), {}, 400, "max_tokens"),
    (
        "max_tokens beyond 64 bits",
        "POST",
        CHAT,
        b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":123456789012345678901234567890}',
        {},
        400,
        "max_tokens",
    ),
    ("temperature out of range", "POST", CHAT, _J(chat(temperature=5)), {}, 400, "temperature"),
    ("tools not a list", "POST", CHAT, _J(chat(tools="all")), {}, 400, "tools"),
    ("bad priority header", "POST", CHAT, _J(chat()), {"X-Nexus-Priority": "urgent"}, 400, "X-Nexus-Priority"),
    ("embeddings without input", "POST", EMBEDDINGS, _J({"model": "m"}), {}, 400, "input"),
    ("embeddings input a number", "POST", EMBEDDINGS, _J({"model": "m", "input": 3}), {}, 400, "input"),
    ("GET on chat completions", "GET", CHAT, b"", {}, 405, None),
    ("PUT on embeddings", "PUT", EMBEDDINGS, b"{}", {}, 405, None),
    ("unknown path", "GET", "/v1/nope", b"", {}, 404, None),
    ("unknown POST path", "POST", "/v2/chat/completions", _J(chat()), {}, 404, None),
    ("body over max_body_bytes", "POST", CHAT, _J(chat(content="x" * 9000)), {}, 413, None),
    ("unknown model", "POST", CHAT, _J(chat(model="no-such-model")), {}, 404, "model"),
]


async def test_bad_input_is_a_4xx_envelope_naming_the_field(fakes, gateways, http):
    local = await fakes("local", ("m",))
    gw = await gateways([backend_for(local)], server={"max_body_bytes": 8192})
    for case, method, path, body, headers, status, param in BAD_REQUESTS:
        headers = {"Content-Type": "application/json", **headers}
        async with http.request(method, gw.url + path, data=body, headers=headers) as resp:
            raw = await resp.read()
            assert resp.status == status, f"{case}: HTTP {resp.status} {raw[:300]!r}"
            assert resp.headers["content-type"] == "application/json", case
        err = assert_envelope(resp.status, raw, case)
        if param is not None:
            assert err["param"] == param, f"{case}: {err!r}"
        if status == 400:
            assert err["type"] == "invalid_request_error", f"{case}: {err!r}"

    # A body streamed in chunks (no Content-Length) is bounded too.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 1000

    async with http.post(gw.url + CHAT, data=chunks(), headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413
        assert_envelope(resp.status, await resp.read(), "chunked oversize body")

    # None of that reached the backend, and the gateway still serves.
    assert [r for r in local.requests if r["path"] == CHAT] == []
    async with http.post(gw.url + CHAT, json=chat()) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"]
    assert len([r for r in local.requests if r["path"] == CHAT]) == 1


# -- the property --------------------------------------------------------------------------------------
VALID_BODIES: list[dict[str, Any]] = [
    chat(),
    chat(content=[{"type": "text", "text": "parts"}], max_tokens=16),
    chat(stream=True, stream_options={"include_usage": True}),
    {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None},
        ],
        "temperature": 0.5,
        "n": 1,
    },
]
PATHS: list[tuple[str | int, ...]] = [
    ("model",),
    ("messages",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("messages", 0, "content", 0),
    ("messages", 0, "content", 0, "type"),
    ("messages", 1),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    ("max_tokens",),
    ("max_completion_tokens",),
    ("temperature",),
    ("n",),
    ("tools",),
    ("response_format",),
    ("input",),
    ("some_vendor_extension",),
]
# Values of the right type (often still semantically odd) keep part of the fuzz past validation.
PLAUSIBLE: dict[str | int, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["m", "e", "nope", "m" * 300]) | st.text(min_size=1, max_size=20),
    "role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]),
    "content": st.text(max_size=50)
    | st.none()
    | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=10)})),
    "type": st.sampled_from(["text", "image_url", "input_audio"]),
    "stream": st.booleans(),
    "include_usage": st.booleans() | st.none(),
    "max_tokens": st.integers(1, 2**63 - 1),
    "max_completion_tokens": st.integers(1, 10**6),
    "temperature": st.floats(0, 2),
    "n": st.integers(1, 128),
    "tools": st.lists(st.fixed_dictionaries({"type": st.just("function")}), max_size=2),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["json_object", "text", "json_schema"])}),
}
HUGE = [10**30, -(10**30), 2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -1e308, 5e-324, float("inf"), float("nan")]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | st.sampled_from(HUGE)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)


def _set(body: Any, path: tuple[str | int, ...], value: Any, delete: bool) -> None:
    node = body
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if delete:
            del node[last]
        else:
            node[last] = value


@st.composite
def mutated_chat(draw: st.DrawFn) -> bytes:
    body = copy.deepcopy(draw(st.sampled_from(VALID_BODIES)))
    deep: int | None = None
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        op = draw(st.sampled_from(["delete", "value", "plausible", "plausible", "huge", "nested", "deep"]))
        if op == "deep":  # nesting too deep for a recursive encoder: spliced in as text below
            deep = draw(st.integers(2, 3000))
            _set(body, path, "\x00DEEP\x00", False)
        else:
            value = {
                "value": json_values,
                "huge": st.sampled_from(HUGE),
                "plausible": PLAUSIBLE.get(path[-1], json_values),
                "nested": st.recursive(json_values, lambda c: st.lists(c, min_size=1, max_size=2), max_leaves=30),
                "delete": st.none(),
            }[op]
            _set(body, path, draw(value), op == "delete")
    text = json.dumps(body)  # stdlib: big ints, NaN and Infinity come out as (invalid) JSON text
    if deep is not None:
        text = text.replace('"\\u0000DEEP\\u0000"', "[" * deep + "]" * deep)
    return text.encode()


@st.composite
def byte_mutation(draw: st.DrawFn) -> bytes:
    raw = json.dumps(draw(st.sampled_from(VALID_BODIES))).encode()
    at = draw(st.integers(0, len(raw)))
    kind = draw(st.sampled_from(["truncate", "insert", "overwrite", "non-utf8"]))
    if kind == "truncate":
        return raw[:at]
    if kind == "insert":
        return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if kind == "overwrite":
        return raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at + 4 :]
    # invalid UTF-8 inside a string value
    return raw.replace(b"hello", b"he\xff\xfello").replace(b'"hi"', b'"h\xc3\x28"').replace(b'"m"', b'"\x80m"')


fuzzed_bodies = st.one_of(
    mutated_chat(),
    mutated_chat(),
    byte_mutation(),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)
fuzz_headers = st.dictionaries(
    st.sampled_from(["X-Nexus-Priority", "X-Nexus-Strict", "X-Nexus-Flexible", "X-Nexus-Explain", "Content-Type"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    max_size=2,
)


class _FuzzTarget:
    """A fake backend and a gateway on the session Redis, living in an event loop the test owns."""

    async def start(self, redis_url: str) -> None:
        client = Redis.from_url(redis_url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        self.fake = await fake_backend("local", ("m", "e"))
        self.gw = GatewayHarness(settings_for([backend_for(self.fake)]), redis_url)
        try:
            await self.gw.start()
        except BaseException:
            await self.gw.stop()
            await self.fake.stop()
            raise
        self.http = aiohttp.ClientSession()

    async def stop(self) -> None:
        await self.http.close()
        await self.gw.stop()
        await self.fake.stop()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        headers = {"Content-Type": "application/json", **headers}  # the fuzz may replace it (415 then)
        async with self.http.post(self.gw.url + path, data=body, headers=headers) as resp:
            return resp.status, resp.headers.get("content-type", ""), await resp.read()


def test_fuzzed_bodies_never_yield_a_server_error(redis_server: EmbeddedRedis):
    """Hypothesis drives one shared gateway from a sync test that owns its event loop: the function-scoped
    async fixtures cannot be shared across examples, so the loop and the gateway live for the whole test."""
    statuses: Counter[int] = Counter()
    with asyncio.Runner() as runner:
        target = _FuzzTarget()
        runner.run(target.start(redis_server.url))
        try:

            @settings(
                max_examples=200,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(body=fuzzed_bodies, path=st.sampled_from([CHAT, CHAT, CHAT, EMBEDDINGS]), headers=fuzz_headers)
            def prop(body: bytes, path: str, headers: dict[str, str]) -> None:
                status, ctype, raw = runner.run(target.post(path, body, headers))
                statuses[status] += 1
                where = f"POST {path} {body[:200]!r} {headers!r}"
                assert status < 500 or status == 503, f"{where}: HTTP {status} {raw[:300]!r}"
                if status == 200:
                    if ctype.startswith("text/event-stream"):
                        assert raw.rstrip().endswith(b"data: [DONE]"), f"{where}: {raw[-300:]!r}"
                    else:
                        payload = orjson.loads(raw)
                        assert "choices" in payload or "data" in payload, f"{where}: {payload!r}"
                else:
                    assert status in (400, 404, 413, 415, 503), f"{where}: HTTP {status} {raw[:300]!r}"
                    assert ctype == "application/json", where
                    assert_envelope(status, raw, where)

            prop()
            # still healthy afterwards
            status, _, _ = runner.run(target.post(CHAT, _J(chat()), {}))
            assert status == 200
        finally:
            runner.run(target.stop())
    # the generator reaches both sides of validation, not only one
    assert statuses[400] > 0 and statuses[200] > 0, statuses


# ------------------------------------------------------------------------------------------------------
# 2. in-flight counts return to zero
# ------------------------------------------------------------------------------------------------------


def _seen_by(fake: Any, marker: str) -> bool:
    for entry in reversed(fake.requests):
        body = entry["body"]
        if isinstance(body, dict) and body.get("messages", [{}])[0].get("content") == marker:
            return True
    return False


async def test_inflight_returns_to_zero_after_disconnects_and_upstream_failures(fakes, gateways, http, redis):
    t0 = time.time()
    # Streams last ~0.5 s and slow answers 1.5 s: long enough that a client on a loaded machine still
    # leaves before the backend finishes.
    streamy = await fakes("streamy", ("s",), stream_chunks=20, chunk_delay_ms=25)
    slow = await fakes("slow", ("slow",), latency_ms=1500)
    flaky = await fakes("flaky", ("f",), error_rate=0.3, seed=7)
    broken = await fakes("broken", ("mid",), fail_mode="midstream", stream_chunks=6, chunk_delay_ms=5)
    cap = {"max_concurrency": 1000}
    # the breaker would (rightly) open on the broken and flaky backends; this test is about accounting
    gw = await gateways([backend_for(f, **cap) for f in (streamy, slow, flaky, broken)],
                        quality={"breaker_failures": 1000})
    url = gw.url + CHAT
    outcomes: Counter[str] = Counter()
    peak = {"local": 0, "cluster": 0}
    done = asyncio.Event()

    async def sampler() -> None:  # evidence the load was real: counts were non-zero while it ran
        while not done.is_set():
            peak["local"] = max(peak["local"], gw.node.load.total())
            peak["cluster"] = max(peak["cluster"], sum((await read_inflight(redis)).values()))
            await asyncio.sleep(0.005)

    # A separate client whose connections are never reused: closing or cancelling drops the socket.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as abort:

        async def stream_abort(i: int) -> None:
            async with abort.post(url, json=chat("s", f"abort {i}", stream=True)) as resp:
                assert resp.status == 200
                assert await resp.content.readany()
                resp.close()  # client goes away after the first chunk
            outcomes["stream_aborted"] += 1

        async def slow_cancel(i: int) -> None:
            marker = f"cancel {i}"
            task = asyncio.ensure_future(abort.post(url, json=chat("slow", marker)))
            await eventually(lambda: task.done() or _seen_by(slow, marker), timeout=15, interval=0.005)
            assert not task.done(), "the slow backend answered before the client could give up"
            task.cancel()  # client gives up while the backend is still thinking
            await asyncio.gather(task, return_exceptions=True)
            outcomes["cancelled"] += 1

        async def flaky_call(i: int, stream: bool) -> None:
            async with http.post(url, json=chat("f", f"flaky {i}", stream=stream)) as resp:
                raw = await resp.read()
            if resp.status == 200:
                assert not stream or raw.rstrip().endswith(b"data: [DONE]")
                outcomes["flaky_ok"] += 1
            else:
                assert resp.status == 502, raw
                assert assert_envelope(resp.status, raw)["code"] == "upstream_failed"
                outcomes["flaky_502"] += 1

        async def midstream(i: int, stream: bool) -> None:
            async with http.post(url, json=chat("mid", f"midstream {i}", stream=stream)) as resp:
                raw = await resp.read()
            if stream:  # headers were sent: the stream ends with an error event instead of [DONE]
                assert resp.status == 200
                assert b"upstream_stream_error" in raw and b"[DONE]" not in raw, raw[-300:]
                outcomes["midstream_event"] += 1
            else:  # half a JSON body: a failure before the client saw a byte
                assert resp.status == 502, raw
                assert_envelope(resp.status, raw)
                outcomes["midstream_502"] += 1

        async def full_stream(i: int) -> None:
            async with http.post(url, json=chat("s", f"full {i}", stream=True)) as resp:
                assert resp.status == 200
                assert (await resp.read()).rstrip().endswith(b"data: [DONE]")
            outcomes["stream_ok"] += 1

        kinds = [
            stream_abort,
            slow_cancel,
            lambda i: flaky_call(i, False),
            lambda i: flaky_call(i, True),
            lambda i: midstream(i, True),
            lambda i: midstream(i, False),
            full_stream,
        ]
        gate = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            async with gate:
                await kinds[i % len(kinds)](i)

        watcher = asyncio.create_task(sampler())
        try:
            await asyncio.gather(*(one(i) for i in range(500)))
        finally:
            done.set()
            await watcher

    assert outcomes["flaky_502"] > 0 and outcomes["flaky_ok"] > 0, outcomes
    assert peak["local"] > 1 and peak["cluster"] > 0, peak

    await eventually(lambda: not gw.node.load.local, timeout=15)

    async def cluster_gauge_zero() -> bool:
        counts = await read_inflight(redis)
        return all(n == 0 for n in counts.values())

    await eventually(cluster_gauge_zero, timeout=15)
    assert gw.node.queue.depth == 0
    # The gateway noticed the streaming clients leave (it did not just stream into the void).
    await eventually(lambda: gw.node.telemetry.buffered == 0, timeout=15)
    stored = {rec.id: rec for rec in gw.records}
    # every one of the 500 requests left telemetry, whatever happened to it: a final record, or (answered 502
    # after every attempt failed) its failed attempts' `<id>:<n>` records
    assert len({rid.split(":")[0] for rid in stored}) == 500, (len(stored), outcomes)
    finals = [rec for rid, rec in stored.items() if ":" not in rid]
    assert len(finals) == 500 - outcomes["flaky_502"] - outcomes["midstream_502"], outcomes
    counted = await _counted(redis, t0)  # and Redis counted each exactly once
    assert (counted.requests, counted.failed_attempts) == (len(finals), len(stored) - len(finals))
    kinds_seen = Counter(rec.outcome for rec in finals)
    assert kinds_seen["client_disconnected"] > 0 and kinds_seen["midstream_error"] > 0, kinds_seen
    async with http.post(url, json=chat("s", "after", stream=True)) as resp:
        assert resp.status == 200
        assert (await resp.read()).rstrip().endswith(b"data: [DONE]")


# ------------------------------------------------------------------------------------------------------
# 3. Redis stopped mid-load
# ------------------------------------------------------------------------------------------------------
PRICE_IN, PRICE_OUT = 1000.0, 3000.0  # USD per 1M tokens: every request costs a few cents


@pytest.fixture
def own_redis(tmp_path) -> Iterator[EmbeddedRedis]:
    """A Redis this test may stop, kill and restart (never the session one)."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _counted(redis: Redis, t0: float, name: Callable[[float], str] = period_of) -> Totals:
    """What Redis counted since `t0`: the aggregates of every period since (a run may cross a period's end;
    `name` names the gateway's periods)."""
    total: dict[str, int] = {}
    for period in sorted({name(t0), name(time.time())}):
        agg = (await read_aggregate(redis, period)).total
        for name in ("requests", "failed_attempts", "nusd"):
            total[name] = total.get(name, 0) + getattr(agg, name)
    return Totals(**total)


# Tests comparing the node's view of the period's spend with the stored total: one budget period for the
# whole module, so a real month end passing mid-test cannot split the spend over two periods.
STEADY = steady_period()


async def _stored(redis_url: str, t0: float) -> tuple[Totals, float]:
    """What Redis counted since `t0`, and the global live spend of the (steady) period."""
    client = Redis.from_url(redis_url)
    try:
        counted = await _counted(client, t0, STEADY.name)
        spend = (await read_live_spend(client, STEADY.name(time.time()))).get(GLOBAL_SCOPE, 0.0)
    finally:
        await client.aclose()
    return counted, spend


@pytest.mark.parametrize("outage", ["stop", "kill"])
async def test_redis_outage_mid_load_keeps_serving_and_replays_spend_exactly_once(
    outage, own_redis, fakes, gateways, http
):
    t0 = time.time()
    cloud = await fakes("cloud", ("gpt-x",))
    model = {"name": "gpt-x", "input_usd_per_1m": PRICE_IN, "output_usd_per_1m": PRICE_OUT}
    gw = await gateways(
        [backend_for(cloud, type="generic", models=[model], max_concurrency=1000)],
        redis_url=own_redis.url,
        testing=knobs_for(STEADY),
    )
    costs: dict[str, float] = {}  # request id -> cost from the response's usage and the configured prices
    after_outage: set[str] = set()  # requests whose record was made after Redis was gone
    phase = {"down": False}
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with gate:
            down = phase["down"]
            async with http.post(gw.url + CHAT, json=chat("gpt-x", f"request {i} " + "x" * (i % 40))) as resp:
                payload = await resp.json()
                assert resp.status == 200, payload
                rid = resp.headers["x-nexus-request-id"]
            usage = payload["usage"]
            costs[rid] = (usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT) / 1e6
            if down:
                after_outage.add(rid)

    async def load(ids: range) -> None:
        await asyncio.gather(*(one(i) for i in ids))

    async def snapshot_age() -> float:
        value = sample(await scrape(http, gw), "nexus_snapshot_age_seconds")
        assert value is not None
        return value

    tel = gw.node.telemetry
    await load(range(0, 100))
    assert await snapshot_age() < 5

    # Redis goes away while 100 more requests are in flight.
    running = asyncio.create_task(load(range(100, 200)))
    await eventually(lambda: len(costs) >= 120 or running.done(), timeout=20)
    await asyncio.to_thread(own_redis.stop if outage == "stop" else own_redis.kill)
    phase["down"] = True
    await running

    # Still serving from the snapshot; telemetry buffers; the snapshot ages.
    batch = iter(range(200, 10_000, 8))

    async def outage_visible() -> bool:
        start = next(batch)
        await load(range(start, start + 8))
        return tel.buffered > 0 and not tel.redis_ok and await snapshot_age() >= 1.0

    await eventually(outage_visible, timeout=30)
    async with http.get(gw.url + "/ready") as resp:
        ready = await resp.json()
    assert resp.status == 200 and ready["ready"] is True and ready["redis_ok"] is False, ready
    assert tel.dropped == 0

    # Redis comes back on the same port (AOF) while requests keep coming.
    restarting = asyncio.create_task(asyncio.to_thread(own_redis.restart))
    start = next(batch)
    await load(range(start, start + 100))
    await restarting
    await eventually(lambda: tel.buffered == 0 and tel.redis_ok, timeout=30)
    await eventually(_lt(snapshot_age, 1.0), timeout=15)  # the refresher resumed by itself

    async def cluster_gauge_zero() -> bool:
        client = Redis.from_url(own_redis.url)
        try:
            return all(n == 0 for n in (await read_inflight(client)).values())
        finally:
            await client.aclose()

    await eventually(cluster_gauge_zero, timeout=15)  # no stale gauge came back with the AOF

    made = {rec.id: rec for rec in gw.records}
    assert set(made) == set(costs), set(made) ^ set(costs)
    for rid, rec in made.items():
        assert rec.cost_usd == pytest.approx(costs[rid], abs=1e-9), rec
        assert rec.outcome == "ok" and rec.status == 200
    counted, spend = await _stored(own_redis.url, t0)
    # Never counted twice: live spend and the aggregate agree, and neither exceeds what was served.
    assert spend == pytest.approx(counted.nusd / 1e9, abs=0.005)
    assert counted.requests <= len(costs) and spend <= sum(costs.values()) + 0.005
    # Everything recorded while Redis was away was buffered and written once it was back (after the restart
    # nothing is lost any more: at least those and the 100 of the restart are counted).
    assert after_outage and counted.requests >= len(after_outage) + 100, (counted.requests, len(after_outage))
    if outage == "stop":
        # SHUTDOWN persists every acknowledged write: nothing lost, nothing doubled.
        assert counted.requests == len(costs), (counted.requests, len(costs))
        assert spend == pytest.approx(sum(costs.values()), abs=0.005)
    # The node's own view of the period's spend agrees once the buffer drained.
    assert tel.spend(GLOBAL_SCOPE) == pytest.approx(spend, abs=0.005)
    assert len(costs) >= 300  # 100 before, 100 across the stop, some while down, 100 across the restart


def _lt(check: Any, bound: float) -> Any:
    async def below() -> bool:
        return await check() < bound

    return below


class _LostReply:
    """A Redis client whose script calls run on the server but whose replies are lost on the way back."""

    def __init__(self, real: Redis) -> None:
        self.real = real
        self.lose = True

    async def eval(self, *args: Any) -> Any:
        result = await self.real.eval(*args)
        if self.lose:
            raise redis_exc.ConnectionError("connection reset while reading the reply")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_replay_after_a_lost_reply_never_counts_twice(redis):
    now = time.time()
    period = period_of(now)
    records = [
        TelemetryRecord(
            id=f"req-{i}",
            ts=now,
            node="n1",
            backend="cloud",
            model="gpt-x",
            key="k1",
            prompt_tokens=10,
            completion_tokens=20,
            cost_usd=0.25 * (i + 1),
        )
        for i in range(3)
    ]
    total = 0.25 + 0.5 + 0.75

    # write_batch itself: a repeated batch adds nothing.
    once = TelemetryBatch("n1:test", 1, tuple(records[:1]), now)
    assert (await write_batch(redis, once)).applied
    assert not (await write_batch(redis, once)).applied
    assert (await read_live_spend(redis, period)) == {GLOBAL_SCOPE: 0.25, "k1": 0.25}
    await redis.flushall()

    # The flush loop: the script ran, the reply was lost -> the records stay buffered and are replayed.
    flaky = _LostReply(redis)
    tel = Telemetry(  # its clock is the records' own instant: no period boundary can fall between them
        flaky, "n1", LoadTracker(), interval_ms=20, max_records=100, calendar=BudgetCalendar, clock=lambda: now  # type: ignore[arg-type]
    )
    for rec in records:
        tel.record(rec)
    assert tel.spend(GLOBAL_SCOPE) == pytest.approx(total)
    with pytest.raises(StateUnavailable):
        await tel.flush()
    assert tel.buffered == 3
    assert (await read_live_spend(redis, period))[GLOBAL_SCOPE] == pytest.approx(total)  # it did land
    assert tel.spend(GLOBAL_SCOPE) == pytest.approx(total)  # and the node does not count it twice either
    with pytest.raises(StateUnavailable):
        await tel.flush()  # lost again: still exactly once in Redis
    flaky.lose = False
    await tel.flush()
    assert tel.buffered == 0
    assert (await read_live_spend(redis, period)) == {GLOBAL_SCOPE: pytest.approx(total), "k1": pytest.approx(total)}
    assert (await read_aggregate(redis, period)).total.requests == 3
    assert tel.spend(GLOBAL_SCOPE) == pytest.approx(total)


# ------------------------------------------------------------------------------------------------------
# 4. graceful shutdown
# ------------------------------------------------------------------------------------------------------


async def _asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """Call the gateway's ASGI app in-process (its listener may already be closed)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_graceful_shutdown_lets_inflight_streams_finish(fakes, gateways, http, redis):
    t0 = time.time()
    fake = await fakes("local", ("m",), stream_chunks=30, chunk_delay_ms=40)  # ~1.2 s per stream
    gw = await gateways([backend_for(fake)])
    node = gw.node
    streams = []
    for i in range(6):
        resp = await http.post(gw.url + CHAT, json=chat(content=f"long story {i}", stream=True))
        assert resp.status == 200
        streams.append(resp)
    await eventually(lambda: node.load.total() == 6)

    # While the last hold lasts the node cannot finish draining: its drain phase becomes observable.
    node.load.acquire("drain-probe")
    stopping = asyncio.create_task(gw.stop())
    try:
        # uvicorn stops accepting first: a new connection is refused rather than half served.
        async def refused() -> bool:
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(gw.url + "/ready") as resp:
                    await resp.read()
                    return False
            except aiohttp.ClientConnectionError:
                return True

        await eventually(refused, timeout=10)
        bodies = [await resp.read() for resp in streams]
        ids_seen: list[str] = []
        for resp, body in zip(streams, bodies, strict=True):
            resp.release()
            assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
            assert sse_text(body) == f"echo: long story {len(ids_seen)}"
            ids_seen.append(resp.headers["x-nexus-request-id"])
        # Streams done, lifespan shutdown running: the node is draining and not ready.
        await eventually(lambda: node.draining, timeout=10)
        assert not node.ready
        status, body = await _asgi_get(gw.app, "/ready")
        assert status == 503
        assert orjson.loads(body)["draining"] is True
        assert not stopping.done()
    finally:
        node.load.release("drain-probe")
        await stopping

    assert not node.load.local
    ids = {resp.headers["x-nexus-request-id"] for resp in streams}
    made = {rec.id: rec for rec in gw.records}
    assert ids <= set(made), ids - set(made)
    assert all(made[rid].outcome == "ok" and made[rid].stream for rid in ids)
    # The final flush on stop wrote every record the node made.
    assert gw.node.telemetry.buffered == 0
    assert (await _counted(redis, t0)).requests == len(made)


class _BlackHole:
    """A backend that reads a request and never answers until stopped (no handler outlives the test)."""

    async def start(self) -> _BlackHole:
        self.seen = asyncio.Event()
        self._release = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.seen.set()
            await self._release.wait()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self._release.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def black_hole() -> AsyncIterator[_BlackHole]:
    hole = await _BlackHole().start()
    try:
        yield hole
    finally:
        await hole.stop()


async def test_shutdown_past_the_grace_period_leaks_no_inflight_count(black_hole, gateways, http, redis):
    """A request still waiting for its backend when the grace period ends is cancelled by the server;
    its in-flight count must be released like any other, or the node waits out its whole drain and
    publishes a phantom load for its backend to every other replica."""
    gw = await gateways([{"name": "hole", "url": black_hole.url, "type": "vllm", "models": ["m"]}])
    gw.server._server.config.timeout_graceful_shutdown = 0.2  # the harness default (5 s) only slows the test
    node = gw.node

    async def call() -> int:
        timeout = aiohttp.ClientTimeout(total=15)
        async with http.post(gw.url + CHAT, json=chat(), timeout=timeout) as resp:
            await resp.read()
            return resp.status

    pending = asyncio.create_task(call())
    await asyncio.wait_for(black_hole.seen.wait(), 10)
    assert node.load.local == {"hole": 1}
    t = time.monotonic()
    await asyncio.wait_for(gw.stop(), 15)
    drained_in = time.monotonic() - t
    results = await asyncio.gather(pending, return_exceptions=True)
    assert not isinstance(results[0], int) or results[0] >= 500  # cut off; anything but a success
    assert node.load.local == {}
    gauge = await redis.hgetall(keys.inflight(node.node_id))
    assert gauge == {}, gauge  # the final flush published no phantom load
    assert drained_in < 1.9, drained_in  # the node did not wait out its 2 s drain for a ghost


async def test_stop_completes_even_when_a_background_task_swallows_its_cancel(fakes, gateways):
    """On Python 3.11 `asyncio.wait_for` (used by redis-py for every send when socket_timeout is set) loses
    a cancel that lands as its inner call completes; the telemetry loop then keeps running and a stop
    that cancels once and gathers never returns. Simulate exactly that swallow."""
    gw = await gateways([backend_for(await fakes("local"))])
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # the first cancel is lost, as inside wait_for on 3.11

    task = asyncio.create_task(stubborn())
    gw.node._tasks.append(task)
    await asyncio.wait_for(gw.stop(), 10)
    assert swallowed.is_set() and task.cancelled()


# ------------------------------------------------------------------------------------------------------
# 5. /metrics
# ------------------------------------------------------------------------------------------------------


async def test_metrics_expose_requests_pipeline_exclusions_snapshot_and_budget(fakes, gateways, http):
    local = await fakes("local", ("m",))
    cloud = await fakes("cloud", ("c", "secret-model"))
    priced = {"name": "c", "input_usd_per_1m": PRICE_IN, "output_usd_per_1m": PRICE_OUT}
    gw = await gateways(
        [backend_for(local), backend_for(cloud, type="generic", models=[priced, "secret-model"])],
        routing={
            "budget": {"monthly_limit_usd": 100.0},
            "policies": [{"model_pattern": "secret-*", "privacy": "restricted"}],
        },
        testing=knobs_for(STEADY),  # utilization is of one period: no real month end may pass mid-test
    )
    spent = 0.0
    for model, n in (("m", 3), ("c", 2)):
        for _ in range(n):
            async with http.post(gw.url + CHAT, json=chat(model)) as resp:
                assert resp.status == 200
                usage = (await resp.json())["usage"]
            if model == "c":
                spent += (usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT) / 1e6
    async with http.post(gw.url + CHAT, json=chat("secret-model")) as resp:
        assert resp.status == 503
        err = await resp.json()
    assert err["context"]["rejection_reasons"][0]["reconciler"] == "PrivacyReconciler"
    async with http.post(gw.url + CHAT, data=b"{", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400

    m = await scrape(http, gw)
    assert sample(m, "nexus_requests_total", endpoint=CHAT, backend="local", status="200") == 3
    assert sample(m, "nexus_requests_total", endpoint=CHAT, backend="cloud", status="200") == 2
    assert sample(m, "nexus_requests_total", endpoint=CHAT, backend="", status="503") == 1
    assert sample(m, "nexus_requests_total", endpoint=CHAT, backend="", status="400") == 1
    decisions = sample(m, "nexus_pipeline_seconds_count")
    assert decisions is not None and decisions >= 6  # at least one decision per parsed request
    assert sample(m, "nexus_pipeline_seconds_bucket", le="+Inf") == decisions
    assert sample(m, "nexus_pipeline_seconds_sum") > 0
    assert sample(m, "nexus_exclusions_total", reconciler="PrivacyReconciler") >= 1
    age = sample(m, "nexus_snapshot_age_seconds")
    assert age is not None and 0 <= age < 5
    assert sample(m, "nexus_budget_utilization", scope=GLOBAL_SCOPE) == pytest.approx(spent / 100.0, rel=1e-6)
    assert spent > 0
