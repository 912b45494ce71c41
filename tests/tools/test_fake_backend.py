"""The fake backend, driven over real HTTP on loopback with the official openai SDK and aiohttp."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from nexus.tools.fake_backend import FakeBackend, FakeBackendOptions, add_arguments, options_from_args

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there, router"}]
Factory = Callable[..., Awaitable[FakeBackend]]


@pytest.fixture
async def backend() -> AsyncIterator[Factory]:
    started: list[FakeBackend] = []

    async def make(**opts: Any) -> FakeBackend:
        fb = FakeBackend(FakeBackendOptions(**opts))
        await fb.start()
        started.append(fb)
        return fb

    yield make
    for fb in started:
        await fb.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sdk(fb: FakeBackend) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{fb.url}/v1", api_key="x", max_retries=0, timeout=5)


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, data=body if isinstance(body, bytes) else orjson.dumps(body)) as r:
        return r.status, orjson.loads(await r.read())


async def test_chat_json_and_stream_agree_with_usage(backend: Factory) -> None:
    fb = await backend(models=["m1", "m2"], stream_chunks=4)
    async with sdk(fb) as client:
        resp = await client.chat.completions.create(model="m2", messages=MSGS)
        text = resp.choices[0].message.content
        assert text == "echo: hello there, router"
        assert resp.model == "m2" and resp.object == "chat.completion"
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage is not None
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0

        stream = await client.chat.completions.create(
            model="m2", messages=MSGS, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(contents) == text
    assert len([c for c in chunks[1:] if c.choices and c.choices[0].finish_reason is None]) == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == resp.usage


async def test_sse_wire_format(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend(stream_chunks=2, reply="abcd", chunk_delay_ms=1)
    body = {"model": "fake-model", "messages": MSGS, "stream": True}
    async with http.post(f"{fb.url}/v1/chat/completions", json=body) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Fake-Backend"] == "fake"
        raw = await r.read()
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "ab"}, {"content": "cd"}, {}]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)  # include_usage not requested


async def test_usage_can_be_withheld(backend: Factory) -> None:
    fb = await backend(report_usage=False)
    async with sdk(fb) as client:
        resp = await client.chat.completions.create(model="fake-model", messages=MSGS)
        assert resp.usage is None
        stream = await client.chat.completions.create(
            model="fake-model", messages=MSGS, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        emb = await client.embeddings.create(model="fake-model", input="x")
    assert all(c.usage is None and c.choices for c in chunks)
    assert emb.usage is None


async def test_max_tokens_truncates_with_length(backend: Factory) -> None:
    fb = await backend(reply="x" * 100)
    async with sdk(fb) as client:
        resp = await client.chat.completions.create(model="fake-model", messages=MSGS, max_tokens=2)
    assert resp.choices[0].message.content == "xxxxxxxx"
    assert resp.choices[0].finish_reason == "length"


async def test_embeddings_models_and_tags(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend(models=["emb", "chat"], context_length=4096, embedding_dim=16)
    async with sdk(fb) as client:
        emb = await client.embeddings.create(model="emb", input=["a", "b", "a"])  # SDK asks base64
        models = await client.models.list()
    vecs = [d.embedding for d in emb.data]
    assert [len(v) for v in vecs] == [16, 16, 16]
    assert vecs[0] == pytest.approx(vecs[2]) and vecs[0] != pytest.approx(vecs[1])
    assert sum(x * x for x in vecs[0]) == pytest.approx(1.0, rel=1e-5)
    status, floats = await post(http, f"{fb.url}/v1/embeddings", {"model": "emb", "input": "a",
                                                                  "dimensions": 4})
    assert status == 200 and len(floats["data"][0]["embedding"]) == 4
    assert [m.id for m in models.data] == ["emb", "chat"]
    assert models.data[0].model_dump()["context_length"] == 4096
    async with http.get(f"{fb.url}/api/tags") as r:
        tags = orjson.loads(await r.read())
    assert [t["name"] for t in tags["models"]] == ["emb", "chat"]
    assert {"model", "modified_at", "size", "digest", "details"} <= set(tags["models"][0])
    async with http.get(f"{fb.url}/health") as r:
        assert r.status == 200


async def test_client_errors(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend()
    async with sdk(fb) as client:
        with pytest.raises(openai.NotFoundError) as exc:
            await client.chat.completions.create(model="nope", messages=MSGS)
    assert exc.value.code == "model_not_found"
    for body in (b"{not json", b"[1]", {"messages": MSGS}, {"model": "fake-model", "messages": "hi"}):
        status, err = await post(http, f"{fb.url}/v1/chat/completions", body)
        assert status == 400 and set(err["error"]) == {"message", "type", "param", "code"}
    status, _ = await post(http, f"{fb.url}/v1/embeddings", {"model": "fake-model", "input": []})
    assert status == 400


async def test_api_key(backend: Factory) -> None:
    fb = await backend(api_key="secret")
    async with sdk(fb) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    async with openai.AsyncOpenAI(base_url=f"{fb.url}/v1", api_key="secret", max_retries=0) as client:
        assert len((await client.models.list()).data) == 1


async def test_error_rate(backend: Factory) -> None:
    fb = await backend(error_rate=1.0)
    async with sdk(fb) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="fake-model", messages=MSGS)

    async def outcomes(fb: FakeBackend) -> list[bool]:
        async with sdk(fb) as client:
            res = []
            for _ in range(20):
                try:
                    await client.chat.completions.create(model="fake-model", messages=MSGS)
                    res.append(True)
                except openai.InternalServerError:
                    res.append(False)
            return res

    first = await outcomes(await backend(error_rate=0.5, seed=7))
    assert first == await outcomes(await backend(error_rate=0.5, seed=7))
    assert 0 < first.count(False) < 20


async def test_fail_mode_close(backend: Factory) -> None:
    fb = await backend(fail_mode="close")
    async with sdk(fb) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="fake-model", messages=MSGS)


async def test_midstream_aborts_after_n_chunks(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend(fail_mode="midstream", midstream_after_chunks=2, stream_chunks=5, reply="abcdefghij")
    body = {"model": "fake-model", "messages": MSGS, "stream": True}
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{fb.url}/v1/chat/completions", json=body) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    received.append(line)
    contents = [orjson.loads(x[6:])["choices"][0]["delta"].get("content") for x in received]
    assert contents == ["", "ab", "cd"]  # the role chunk, then exactly two content chunks

    async with sdk(fb) as client:
        stream = await client.chat.completions.create(model="fake-model", messages=MSGS, stream=True)
        with pytest.raises(openai.APIConnectionError):
            async for _ in stream:
                pass
        await stream.close()
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="fake-model", messages=MSGS)
    with pytest.raises(aiohttp.ClientPayloadError):  # a JSON reply is cut short too
        await post(http, f"{fb.url}/v1/chat/completions", {"model": "fake-model", "messages": MSGS})


async def test_loading_then_ready(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend(loading_seconds=0.3)
    for path in ("/v1/models", "/api/tags", "/health"):
        async with http.get(f"{fb.url}{path}") as r:
            assert r.status == 503 and "loading" in (await r.text())
    async with sdk(fb) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            await client.chat.completions.create(model="fake-model", messages=MSGS)
        assert exc.value.status_code == 503 and "loading" in exc.value.message
        deadline = time.monotonic() + 5
        while True:
            try:
                resp = await client.chat.completions.create(model="fake-model", messages=MSGS)
                break
            except openai.APIStatusError as e:
                assert e.status_code == 503 and time.monotonic() < deadline
                await asyncio.sleep(0.02)
        assert resp.choices[0].message.content
        assert (await client.models.list()).data[0].id == "fake-model"


async def test_anthropic_messages(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend(models=["claude-fake"], stream_chunks=3)
    body = {"model": "claude-fake", "max_tokens": 100, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi claude"}]}]}
    status, msg = await post(http, f"{fb.url}/v1/messages", body)
    assert status == 200 and msg["type"] == "message" and msg["stop_reason"] == "end_turn"
    assert msg["content"] == [{"type": "text", "text": "echo: hi claude"}]
    assert msg["usage"]["input_tokens"] > 0 and msg["usage"]["output_tokens"] > 0

    async with http.post(f"{fb.url}/v1/messages", json={**body, "stream": True}) as r:
        raw = (await r.read()).decode()
    events = [e.split("\n") for e in raw.strip().split("\n\n")]
    names = [e[0].removeprefix("event: ") for e in events]
    datas = [orjson.loads(e[1].removeprefix("data: ")) for e in events]
    assert names == ["message_start", "content_block_start", *["content_block_delta"] * 3,
                     "content_block_stop", "message_delta", "message_stop"]
    assert [d["type"] for d in datas] == names
    text = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
    assert text == msg["content"][0]["text"]
    assert datas[-2]["delta"]["stop_reason"] == "end_turn"
    assert datas[-2]["usage"]["output_tokens"] == msg["usage"]["output_tokens"]

    status, err = await post(http, f"{fb.url}/v1/messages", {**body, "model": "gpt-x"})
    assert status == 404 and err["type"] == "error" and err["error"]["type"] == "not_found_error"


async def test_request_log_over_http(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend()
    async with sdk(fb) as client:
        await client.chat.completions.create(model="fake-model", messages=MSGS,
                                             extra_headers={"X-Nexus-Request-Id": "r1"})
    async with http.get(f"{fb.url}/_fake/requests") as r:
        log = orjson.loads(await r.read())
    assert log == orjson.loads(orjson.dumps(fb.requests))
    (entry,) = log
    assert entry["path"] == "/v1/chat/completions" and entry["model"] == "fake-model"
    assert entry["headers"]["authorization"] == "Bearer x"
    assert entry["headers"]["x-nexus-request-id"] == "r1"
    assert entry["body"]["messages"] == MSGS and entry["ts"] > 0
    async with http.post(f"{fb.url}/_fake/reset") as r:
        assert r.status == 200
    assert fb.requests == []


async def test_runtime_config(backend: Factory, http: aiohttp.ClientSession) -> None:
    fb = await backend()
    url = f"{fb.url}/_fake/config"
    status, cfg = await post(http, url, {"fail_mode": "500", "latency_ms": 1})
    assert status == 200 and cfg["fail_mode"] == "500" and fb.options.latency_ms == 1
    async with sdk(fb) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="fake-model", messages=MSGS)
        for bad in ({"nope": 1}, {"fail_mode": "boom"}, {"error_rate": 2}, {"stream_chunks": "3"},
                    {"report_usage": 1}, {"models": []}, b"[]", b"{bad"):
            status, err = await post(http, url, bad)
            assert status == 400 and err["error"]["message"], bad
        assert fb.options.fail_mode == "500"  # rejected changes leave options untouched
        status, _ = await post(http, url, {"fail_mode": "none", "models": ["new-model"]})
        assert status == 200
        resp = await client.chat.completions.create(model="new-model", messages=MSGS)
        assert resp.model == "new-model"
    async with http.get(url) as r:
        assert orjson.loads(await r.read())["models"] == ["new-model"]


def test_cli_helpers() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--port", "9", "--model", "a", "--model", "b", "--latency-ms", "5",
                            "--stream-chunks", "3", "--error-rate", "0.1", "--loading-seconds", "2",
                            "--no-usage", "--fail-mode", "close"])
    opts = options_from_args(ns)
    assert ns.port == 9
    assert opts == FakeBackendOptions(models=("a", "b"), latency_ms=5.0, stream_chunks=3, error_rate=0.1,
                                      loading_seconds=2.0, report_usage=False, fail_mode="close")
    assert options_from_args(parser.parse_args([])) == FakeBackendOptions()
    with pytest.raises(ValueError):
        options_from_args(parser.parse_args(["--error-rate", "3"]))


async def test_run_forever_in_a_subprocess(http: aiohttp.ClientSession) -> None:
    code = ("import sys; from nexus.tools.fake_backend import *; "
            "run_forever(FakeBackendOptions(name='sub', models=['m']), '127.0.0.1', 0)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)  # type: ignore[union-attr]
        assert "listening on http://127.0.0.1:" in line
        url = line.split()[-1]
        async with http.get(f"{url}/v1/models") as r:
            assert orjson.loads(await r.read())["data"][0]["owned_by"] == "sub"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
