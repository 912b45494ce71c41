"""What holds on every inbound protocol, each driven with its official client:

- streams stay incremental: the upstream waits 200 ms between events and sends the next one only once the
  client saw the content before it (lock-step), so a gateway that buffered would stall it; the client sees
  the content arrive at least 200 ms apart;
- privacy and budgets: a restricted model asked through any protocol never reaches an open backend (the
  upstream's own request log says so), and a cloud block at the hard limit holds the same way;
- key limits (docs/tenancy.md): a key's RPM holds through every protocol, the 429 in the protocol's own
  envelope, and a restricted key never reaches an open backend through any of them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable

import anthropic
import ollama
import openai
import pytest

from nexus.core.model import BudgetStatus
from nexus.core.tenancy import sha256_digest
from tests.harness import eventually
from tests.router_node.protocols.conftest import standin_backend
from tests.router_node.test_gateway_routing import STEADY, add_spend, budget_status

PROMPT = "one two three"
Mark = Callable[[], None]


KEY = "nx-protocol-tests-key-0123456789"


async def _chat(url: str, mark: Mark, model: str = "m", key: str = "k") -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as c:
        async for chunk in await c.chat.completions.create(model=model, stream=True,
                                                           messages=[{"role": "user", "content": PROMPT}]):
            if chunk.choices and chunk.choices[0].delta.content:
                mark()


async def _completions(url: str, mark: Mark, model: str = "m", key: str = "k") -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as c:
        async for chunk in await c.completions.create(model=model, prompt=PROMPT, stream=True):
            if chunk.choices and chunk.choices[0].text:
                mark()


async def _messages(url: str, mark: Mark, model: str = "m", key: str = "k") -> None:
    async with anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0) as c, \
            c.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": PROMPT}]) as s:
        async for text in s.text_stream:
            if text:
                mark()


async def _responses(url: str, mark: Mark, model: str = "m", key: str = "k") -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as c, \
            c.responses.stream(model=model, input=PROMPT) as s:
        async for event in s:
            if event.type == "response.output_text.delta":
                mark()


async def _ollama(url: str, mark: Mark, model: str = "m", key: str = "k") -> None:
    c = ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {key}"})
    try:
        async for part in await c.chat(model=model, stream=True, messages=[{"role": "user", "content": PROMPT}]):
            if part.message.content:
                mark()
    finally:
        await c.close()


CLIENTS: dict[str, Callable[..., Awaitable[None]]] = {
    "chat": _chat, "completions": _completions, "messages": _messages, "responses": _responses, "ollama": _ollama}


@pytest.mark.parametrize(("protocol", "kind"), [
    *[pytest.param(p, "vllm", id=f"{p}-via-chat") for p in CLIENTS],
    pytest.param("messages", "anthropic", id="messages-native"),
])
async def test_streams_stay_incremental(gateway_to, protocol: str, kind: str) -> None:
    gw, up = await gateway_to(kind, pace=0.2, lockstep=True)
    arrived: list[float] = []

    def mark() -> None:
        arrived.append(time.monotonic())
        up.received(len(arrived) - 1)  # only now may the upstream go on

    await CLIENTS[protocol](gw.url, mark)
    assert not up.stalled, "content reached the client only after the upstream had sent more"
    assert len(arrived) == len(up.sent_at) >= 3
    gaps = [b - a for a, b in itertools.pairwise(arrived)]
    assert min(gaps) >= 0.2, gaps
    assert all(s <= a for s, a in zip(up.sent_at, arrived, strict=True))


async def _refused(call: Awaitable[None]) -> int:
    return (await _refusal(call)).status_code


async def _refusal(call: Awaitable[None]) -> openai.APIStatusError | anthropic.APIStatusError | ollama.ResponseError:
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError, ollama.ResponseError)) as info:
        await call
    return info.value


def _key(**limits) -> dict:
    return {"id": "key_0000000000c3", "name": "app", "digest": sha256_digest(KEY), **limits}


# what each protocol's own 429 says, as its client library parsed it
_LIMITED = {
    "chat": lambda e: e.body["code"] == "rate_limit_exceeded",
    "completions": lambda e: e.body["code"] == "rate_limit_exceeded",
    "responses": lambda e: e.body["code"] == "rate_limit_exceeded",
    "messages": lambda e: e.body["type"] == "error" and e.body["error"]["type"] == "rate_limit_error",
    "ollama": lambda e: "rate limit" in e.error,
}


@pytest.mark.parametrize("protocol", list(CLIENTS))
async def test_a_keys_rpm_holds_on_every_protocol_with_the_protocols_own_429(gateways, standins, protocol):
    up = await standins()
    gw = await gateways([standin_backend(up, "vllm")], keys=[_key(rpm=2)])
    for _ in range(2):
        await CLIENTS[protocol](gw.url, lambda: None, key=KEY)
    err = await _refusal(CLIENTS[protocol](gw.url, lambda: None, key=KEY))
    assert err.status_code == 429 and _LIMITED[protocol](err), getattr(err, "body", err)
    assert len(up.requests) == 2
    assert await _refused(CLIENTS[protocol](gw.url, lambda: None, key="nx-not-a-key")) == 401


@pytest.mark.parametrize("protocol", list(CLIENTS))
async def test_a_restricted_key_never_reaches_an_open_backend(gateways, standins, monkeypatch, protocol):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")
    local, cloud = await standins(), await standins()
    await local.stop()  # the one backend the key may use is down: failing over to the cloud would leak
    gw = await gateways([standin_backend(local, "vllm", "local"),
                         standin_backend(cloud, "openai", "cloud", priority=100)], keys=[_key(privacy="restricted")])
    assert await _refused(CLIENTS[protocol](gw.url, lambda: None, key=KEY)) == 502
    assert cloud.requests == []


@pytest.mark.parametrize("protocol", list(CLIENTS))
async def test_a_restricted_model_never_reaches_an_open_backend(gateways, standins, monkeypatch, protocol):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")
    local, cloud = await standins(("m", "free")), await standins(("m", "free"))
    await local.stop()  # the only backend privacy allows is down: failing over to the cloud would leak
    gw = await gateways([standin_backend(local, "vllm", "local"),
                         standin_backend(cloud, "openai", "cloud", priority=100)],
                        routing={"policies": [{"model_pattern": "m", "privacy": "restricted"}]})
    status = await _refused(CLIENTS[protocol](gw.url, lambda: None))
    assert status == 502 and cloud.requests == []
    await CLIENTS[protocol](gw.url, lambda: None, "free")  # the same request for an open model does fail over
    native = {"completions": "/v1/completions", "responses": "/v1/responses"}  # an openai backend speaks both
    assert [path for path, _, _ in cloud.requests] == [native.get(protocol, "/v1/chat/completions")]


@pytest.mark.parametrize("protocol", ["messages", "ollama", "responses"])
async def test_a_cloud_block_at_the_hard_limit_holds(gateways, standins, monkeypatch, redis, protocol):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")
    cloud = await standins()
    gw = await gateways([standin_backend(cloud, "openai", "cloud")],
                        routing={"budget": {"monthly_limit_usd": 1.0, "hard_limit_action": "block_cloud"}}, **STEADY)
    await add_spend(redis, 2.0, gw)
    await eventually(lambda: budget_status(gw) is BudgetStatus.HARD_LIMIT)
    assert await _refused(CLIENTS[protocol](gw.url, lambda: None)) == 503
    assert cloud.requests == []


