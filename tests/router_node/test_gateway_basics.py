import socket

import openai
import pytest

from tests.router_node.conftest import backend_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


async def test_sdk_chat_stream_and_embeddings(fakes, gateways):
    local = await fakes("local", ("m", "embed"), stream_chunks=7)
    gw = await gateways([backend_for(local)])
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    try:
        raw = await client.chat.completions.with_raw_response.create(**CHAT)
        completion = raw.parse()
        assert raw.headers["x-nexus-backend"] == "local"
        assert raw.headers["x-nexus-backend-type"] == "local"
        assert raw.headers["x-nexus-privacy-zone"] == "restricted"
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(**CHAT, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert len(pieces) >= 7
        assert "".join(pieces) == completion.choices[0].message.content
        emb = await client.embeddings.create(model="embed", input=["a", "b"])
        assert len(emb.data) == 2
        models = await client.models.list()
        assert {m.id for m in models.data} == {"m", "embed"}
    finally:
        await client.close()


async def test_unknown_model_is_404_with_available_models(fakes, gateways):
    gw = await gateways([backend_for(await fakes("local"))])
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="nope", messages=CHAT["messages"])
        assert err.value.body["code"] == "model_not_found"
        assert "available models: m" in err.value.body["message"]
    finally:
        await client.close()


async def test_anthropic_backend_is_translated_both_ways(fakes, gateways, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")  # the gateway reads the key from its environment
    claude = await fakes("claude", ("claude-sonnet-4",), stream_chunks=4, api_key="sk-test-secret")
    gw = await gateways([backend_for(claude, type="anthropic", api_key_env="TEST_KEY")])
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    body = {
        "model": "claude-sonnet-4",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello claude"}],
    }
    try:
        completion = await client.chat.completions.create(**body)
        assert completion.object == "chat.completion"
        assert completion.choices[0].message.content
        assert completion.usage.prompt_tokens > 0
        stream = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == completion.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finally:
        await client.close()
    sent = [r for r in claude.requests if r["path"] == "/v1/messages"]
    assert len(sent) == 2
    assert sent[0]["body"]["system"] and sent[0]["body"]["max_tokens"]
    assert sent[1]["body"]["stream"] is True


async def test_per_backend_timeout_applies(fakes, gateways, http):
    slow = await fakes("slow", latency_ms=3000)
    gw = await gateways([backend_for(slow, timeout_seconds=0.3)], server={"request_timeout_seconds": 60})
    async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
        body = await resp.json()
    assert resp.status == 504
    assert body["error"]["code"] == "upstream_timeout"


async def test_backend_rejecting_the_gateways_key_fails_over_not_401(fakes, gateways, http, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-wrong")
    keyed = await fakes("keyed", api_key="sk-right")
    spare = await fakes("spare")
    gw = await gateways(
        [backend_for(keyed, type="openai", api_key_env="TEST_KEY", priority=0), backend_for(spare, priority=5)]
    )
    async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        assert resp.headers["X-Nexus-Backend"] == "spare"
        assert resp.headers["X-Nexus-Route-Reason"] == "failover"


async def test_backend_rejecting_the_gateways_key_alone_is_502(fakes, gateways, http, monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-wrong")
    keyed = await fakes("keyed", api_key="sk-right")
    gw = await gateways([backend_for(keyed, type="openai", api_key_env="TEST_KEY")])
    async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
        body = await resp.json()
    assert resp.status == 502
    assert "check its secret" in body["error"]["message"]


async def test_passive_health_moves_traffic_off_a_failing_backend_at_once(fakes, gateways, http):
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    spare = await fakes("spare")
    gw = await gateways(
        [
            {"name": "dead", "url": f"http://127.0.0.1:{dead_port}", "type": "vllm", "models": ["m"], "priority": 0},
            backend_for(spare, priority=5),
        ],
        quality={"eject_after_failures": 3, "eject_seconds": 60},
    )
    reasons = []
    for _ in range(6):
        async with http.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200 and resp.headers["X-Nexus-Backend"] == "spare"
            reasons.append(resp.headers["X-Nexus-Route-Reason"])
    # three failed first attempts, then the dead backend is tried last without waiting for health probes
    assert reasons == ["failover"] * 3 + ["passive_health"] * 3
