"""Ollama's API (/api/chat, /api/generate, /api/embed, /api/tags, /api/show) driven with the official `ollama`
client over real HTTP: answers agree with the upstream's own, streams are NDJSON, errors `{"error": ...}`."""

from __future__ import annotations

import base64

import ollama
import openai
import orjson
import pytest


@pytest.fixture
async def ollama_at():
    """`ollama_at(url)` -> an AsyncClient, closed after the test."""
    made: list[ollama.AsyncClient] = []

    def make(url: str) -> ollama.AsyncClient:
        made.append(ollama.AsyncClient(host=url))
        return made[-1]

    yield make
    for c in made:
        await c.close()


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def test_chat_agrees_with_the_upstream_streamed_or_not(gateway_to, ollama_at):
    gw, up = await gateway_to("vllm")
    via = ollama_at(gw.url)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    async with openai.AsyncOpenAI(base_url=f"{up.url}/v1", api_key="x") as direct:
        chat = await direct.chat.completions.create(model="m", messages=msgs, temperature=0.5)
    whole = await via.chat(model="m", messages=msgs, options={"temperature": 0.5})
    parts = [p async for p in await via.chat(model="m", messages=msgs, stream=True)]
    assert (whole.model, whole.message.role, whole.message.content) == ("m", "assistant",
                                                                        chat.choices[0].message.content)
    assert (whole.done, whole.done_reason) == (True, "stop")
    assert (whole.prompt_eval_count, whole.eval_count) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True] and len(parts) > 2
    assert parts[-1].eval_count == whole.eval_count
    assert up.requests[1][2]["temperature"] == 0.5 and "stream" not in up.requests[1][2]  # stream: false sent


async def test_an_absent_stream_field_streams_as_ollamas_server_does(gateway_to, http):
    gw, _ = await gateway_to("vllm")
    async with http.post(f"{gw.url}/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
                         ) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])
    assert lines[-1]["nexus_cost_usd"] == 0.0


async def test_tools_images_and_json_format(gateway_to, ollama_at):
    gw, up = await gateway_to("vllm", backend={"models": [{"name": "m", "vision": True}]})
    via = ollama_at(gw.url)
    ask = [{"role": "user", "content": "weather in Paris?"}]
    first = await via.chat(model="m", messages=ask, tools=[WEATHER])
    call = first.message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", {"city": "Paris"})
    streamed = [p async for p in await via.chat(model="m", messages=ask, tools=[WEATHER], stream=True)]
    assert [c.function.arguments for p in streamed for c in p.message.tool_calls or ()] == [{"city": "Paris"}]
    answer = await via.chat(model="m", tools=[WEATHER], messages=[
        *ask, first.message, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}])
    assert answer.message.content == "the tool said: sunny"
    sent = up.requests[2][2]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == sent[-1]["tool_call_id"]  # the stand-in checked the pairing too
    seen = await via.chat(model="m", messages=[{"role": "user", "content": "look", "images": [PNG]}])
    assert seen.message.content == "echo: look [1 image(s)]"
    assert up.requests[3][2]["messages"][0]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    js = await via.chat(model="m", messages=[{"role": "user", "content": "hi"}], format="json")
    assert orjson.loads(js.message.content) == {"answer": "hi"}
    assert up.requests[4][2]["response_format"] == {"type": "json_object"}


async def test_generate_and_embed(gateway_to, ollama_at):
    gw, up = await gateway_to("vllm")
    via = ollama_at(gw.url)
    gen = await via.generate(model="m", prompt="why is the sky blue?", system="be brief")
    assert gen.response == "echo: why is the sky blue?" and gen.done
    pieces = [p async for p in await via.generate(model="m", prompt="why?", stream=True)]
    assert "".join(p.response for p in pieces) == "echo: why?"
    emb = await via.embed(model="m", input=["a", "bbbb"])
    assert emb.embeddings == [[0.1, 0.5, -0.25], [0.4, 0.5, -0.25]]
    assert up.requests[0][2]["messages"] == [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "why is the sky blue?"}]


async def test_tags_show_and_errors(gateway_to, ollama_at):
    gw, _ = await gateway_to("vllm", backend={"models": [{"name": "m", "context_length": 4096, "vision": True}]})
    via = ollama_at(gw.url)
    listed = await via.list()
    assert [m.model for m in listed.models] == ["m"]
    shown = await via.show("m")
    assert shown.modelinfo["nexus.context_length"] == 4096
    assert shown.capabilities == ["completion", "tools", "vision"]
    with pytest.raises(ollama.ResponseError) as missing:
        await via.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404 and "nope" in missing.value.error
    with pytest.raises(ollama.ResponseError) as unknown:
        await via.show("nope")
    assert unknown.value.status_code == 404 and unknown.value.error == "model 'nope' not found"
