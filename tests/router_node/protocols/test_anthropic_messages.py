"""POST /v1/messages and /v1/messages/count_tokens, driven with the official `anthropic` SDK over real HTTP.

Against an Anthropic backend the request goes on as sent (no double translation) and the answer equals the
upstream's own, field by field; against an OpenAI-compatible backend it is translated both ways and agrees
with what the upstream answered through its own API (text, tool calls, stop reason, usage).
"""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import openai
import pytest

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
HELLO = {"model": "m", "max_tokens": 64, "system": "be brief", "messages": [{"role": "user", "content": "hello"}]}


def client(url: str, **kw: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=kw.pop("api_key", "sk-test-secret"), max_retries=0, **kw)


async def test_an_anthropic_backend_gets_the_request_as_sent_and_its_answer_comes_back_as_is(gateway_to):
    gw, up = await gateway_to("anthropic")
    async with client(gw.url) as via, client(up.url) as direct:
        got = await via.messages.with_raw_response.create(**HELLO)
        want = await direct.messages.create(**HELLO)
        assert (await got.parse()).model_dump() == want.model_dump()
        assert got.headers["x-nexus-backend"] == "anthropic"
        assert float(got.headers["x-nexus-cost"]) >= 0
    sent = [body for path, _, body in up.requests if path == "/v1/messages"]
    assert sent[0] == HELLO  # as the client sent it: nothing translated, nothing dropped
    assert up.versions[0] == up.versions[1] == anthropic._constants.ANTHROPIC_API_VERSION  # the client's version


async def test_messages_through_an_openai_backend_agree_with_the_upstream(gateway_to):
    gw, up = await gateway_to("vllm")
    async with client(gw.url) as via, openai.AsyncOpenAI(base_url=f"{up.url}/v1", api_key="x") as direct:
        msg = await via.messages.create(**HELLO)
        chat = await direct.chat.completions.create(
            model="m", max_tokens=64, messages=[{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hello"}])
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == chat.choices[0].message.content
    assert (msg.role, msg.model, msg.stop_reason, msg.stop_sequence) == ("assistant", "m", "end_turn", None)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (chat.usage.prompt_tokens,
                                                                 chat.usage.completion_tokens)
    assert up.requests[0][0] == "/v1/chat/completions"
    assert up.requests[0][2]["messages"][0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize("kind", ["vllm", "anthropic"])
async def test_tools_round_trip_with_tool_result_ids(gateway_to, kind):
    gw, up = await gateway_to(kind)
    ask = {**HELLO, "tools": [WEATHER], "messages": [{"role": "user", "content": "weather in Paris?"}]}
    async with client(gw.url) as via:
        first = await via.messages.create(**ask)
        assert first.stop_reason == "tool_use"
        use = next(b for b in first.content if b.type == "tool_use")
        assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
        turns = [*ask["messages"], {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
        second = await via.messages.create(**{**ask, "messages": turns})
        async with via.messages.stream(**ask) as stream:
            streamed = await stream.get_final_message()
    assert second.content[0].text == "the tool said: sunny" and second.stop_reason == "end_turn"
    # the stream assembles (input_json_delta pieces included) into the same message
    assert [(b.type, getattr(b, "input", None)) for b in streamed.content] == \
        [(b.type, getattr(b, "input", None)) for b in first.content]
    assert (streamed.stop_reason, streamed.usage.output_tokens) == (first.stop_reason, first.usage.output_tokens)
    if kind == "vllm":  # the stand-in checked that the tool message answers the assistant's call by id
        tool_msg = up.requests[1][2]["messages"][-1]
        assert tool_msg == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


async def test_stream_has_the_full_event_sequence(gateway_to, http):
    gw, _ = await gateway_to("vllm")
    async with client(gw.url) as via:
        whole = await via.messages.create(**HELLO)
        events = [e async for e in await via.messages.create(**HELLO, stream=True)]
    async with http.post(f"{gw.url}/v1/messages", json={**HELLO, "stream": True}) as resp:
        raw = (await resp.read()).decode()
    lines = raw.split("\n")
    names = [line[7:] for line in lines if line.startswith("event: ")]
    # every data: line follows its event: line (the SDK skips ping, so it is checked on the wire)
    assert names == [lines[i - 1][7:] for i, line in enumerate(lines) if line.startswith("data: ")]
    kinds = [e.type for e in events]
    n = kinds.count("content_block_delta")
    assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * n,
                     "content_block_stop", "message_delta", "message_stop"] and n > 1
    assert kinds == [k for k in names if k != "ping"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == whole.content[0].text
    delta = events[-2]
    assert (delta.delta.stop_reason, delta.usage.output_tokens) == ("end_turn", whole.usage.output_tokens)
    assert delta.model_extra["nexus_cost_usd"] >= 0  # the real cost, on the final usage event


async def test_images_and_system_blocks_are_translated(gateway_to):
    gw, up = await gateway_to("vllm", backend={"models": [{"name": "m", "vision": True}]})
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]
    async with client(gw.url) as via:
        msg = await via.messages.create(model="m", max_tokens=32, system=[{"type": "text", "text": "one"},
                                                                         {"type": "text", "text": "two"}],
                                        messages=[{"role": "user", "content": content}])
    assert msg.content[0].text == "echo: what is this? [1 image(s)]"
    sent = up.requests[0][2]["messages"]
    assert sent[0] == {"role": "system", "content": "one\n\ntwo"}
    assert sent[1]["content"][1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


async def test_count_tokens_is_the_gateway_estimate(gateway_to):
    gw, _ = await gateway_to("vllm")
    async with client(gw.url) as via:
        short = await via.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hi"}])
        long = await via.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hi " * 400}])
    assert 0 < short.input_tokens < long.input_tokens


async def test_errors_come_in_anthropics_envelope(gateway_to):
    gw, _ = await gateway_to("vllm")
    async with client(gw.url) as via:
        with pytest.raises(anthropic.NotFoundError) as missing:
            await via.messages.create(**{**HELLO, "model": "nope"})
        with pytest.raises(anthropic.BadRequestError) as bad:
            await via.messages.create(**HELLO, extra_body={"frobnicate": 1})
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    assert bad.value.body["error"] == {"type": "invalid_request_error",
                                       "message": "frobnicate: unknown field (not a Messages API field this "
                                                  "gateway can translate)"}


async def test_anthropic_keys_authenticate_by_x_api_key_or_bearer(gateways, standins, monkeypatch):
    import hashlib

    from tests.router_node.protocols.conftest import standin_backend

    up = await standins()
    digest = hashlib.sha256(b"client-key").hexdigest()
    gw = await gateways([standin_backend(up, "vllm")], server={"api_keys": [f"sha256:{digest}"]})
    async with client(gw.url, api_key="client-key") as by_key, \
            anthropic.AsyncAnthropic(base_url=gw.url, auth_token="client-key", max_retries=0) as by_token, \
            client(gw.url, api_key="wrong") as wrong:
        assert (await by_key.messages.create(**HELLO)).content[0].text
        assert (await by_token.messages.create(**HELLO)).content[0].text
        with pytest.raises(anthropic.AuthenticationError) as denied:
            await wrong.messages.create(**HELLO)
    assert denied.value.body["error"]["type"] == "authentication_error"
