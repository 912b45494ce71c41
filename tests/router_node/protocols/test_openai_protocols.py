"""POST /v1/responses (stateless, translated to chat), POST /v1/completions and GET /v1/models/{id}, driven
with the official `openai` SDK over real HTTP, compared with the stand-in upstream's own answers."""

from __future__ import annotations

import openai
import pytest

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_responses_agree_with_the_chat_upstream(gateway_to):
    gw, up = await gateway_to("vllm")
    async with client(gw.url) as via, client(up.url) as direct:
        resp = await via.responses.create(model="m", instructions="be brief", input="hello there",
                                          max_output_tokens=50)
        chat = await direct.chat.completions.create(model="m", max_tokens=50, messages=[
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert resp.object == "response" and resp.status == "completed" and resp.model == "m"
    assert resp.output_text == chat.choices[0].message.content
    assert [(o.type, o.role, o.status) for o in resp.output] == [("message", "assistant", "completed")]
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (
        chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens)
    assert (resp.instructions, resp.max_output_tokens) == ("be brief", 50)
    assert up.requests[0][2]["messages"][0] == {"role": "system", "content": "be brief"}


async def test_responses_function_calls_round_trip_and_stream(gateway_to):
    gw, up = await gateway_to("vllm")
    async with client(gw.url) as via:
        first = await via.responses.create(model="m", input="weather in Paris?", tools=[WEATHER])
        call = first.output[0]
        assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", '{"city":"Paris"}')
        items = [{"role": "user", "content": "weather in Paris?"},
                 {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                 {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
        second = await via.responses.create(model="m", input=items, tools=[WEATHER])
        async with via.responses.stream(model="m", input="weather in Paris?", tools=[WEATHER]) as stream:
            kinds = [e.type async for e in stream]
            streamed = await stream.get_final_response()
        async with via.responses.stream(model="m", input="hi") as stream:
            text_kinds = [e.type async for e in stream]
            text = await stream.get_final_response()
    assert second.output_text == "the tool said: sunny"
    assert up.requests[1][2]["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert [(o.type, o.name, o.arguments) for o in streamed.output] == [("function_call", "get_weather",
                                                                          '{"city":"Paris"}')]
    n = kinds.count("response.function_call_arguments.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * n, "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"] and n > 1
    n = text_kinds.count("response.output_text.delta")
    assert text_kinds == ["response.created", "response.in_progress", "response.output_item.added",
                          "response.content_part.added", *["response.output_text.delta"] * n,
                          "response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert text.output_text == "echo: hi" and text.usage.output_tokens > 0
    assert text.model_extra["nexus_cost_usd"] == 0.0  # a local backend: free, and said so


async def test_an_openai_backend_gets_responses_as_sent_and_answers_as_is(gateway_to):
    gw, up = await gateway_to("openai", backend={"models": [{"name": "m", "input_usd_per_1m": 2.0,
                                                             "output_usd_per_1m": 8.0}]})
    ask = {"model": "m", "input": "weather in Paris?", "tools": [WEATHER]}
    async with client(gw.url) as via, client(up.url) as direct:
        got = await via.responses.with_raw_response.create(**ask)
        want = await direct.responses.create(**ask)
        async with via.responses.stream(model="m", input="hi there") as stream:
            kinds = [e.type async for e in stream]
            streamed = await stream.get_final_response()
    assert got.parse().model_dump() == want.model_dump()
    usage = want.usage  # the real cost: the backend's usage at the model's prices
    assert float(got.headers["x-nexus-cost"]) == pytest.approx(
        (usage.input_tokens * 2.0 + usage.output_tokens * 8.0) / 1e6, abs=1e-6)
    sent = [body for path, _, body in up.requests if path == "/v1/responses"]
    assert sent[0] == ask and [p for p, _, _ in up.requests].count("/v1/chat/completions") == 0
    assert streamed.output_text == "echo: hi there" and kinds[-1] == "response.completed"
    assert streamed.model_extra["nexus_cost_usd"] > 0


async def test_responses_refuse_state_it_does_not_keep(gateway_to):
    gw, _ = await gateway_to("vllm")
    async with client(gw.url) as via:
        with pytest.raises(openai.BadRequestError) as info:
            await via.responses.create(model="m", input="hi", previous_response_id="resp_1")
    assert info.value.body["param"] == "previous_response_id"


async def test_completions_pass_through(gateway_to):
    gw, up = await gateway_to("vllm")
    async with client(gw.url) as via, client(up.url) as direct:
        got = await via.completions.create(model="m", prompt="once upon a time", max_tokens=20)
        want = await direct.completions.create(model="m", prompt="once upon a time", max_tokens=20)
        stream = await via.completions.create(model="m", prompt="once upon a time", stream=True,
                                              stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    assert got.model_dump() == want.model_dump()
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.choices[0].text
    assert chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    assert chunks[-1].model_extra["nexus_cost_usd"] == 0.0


async def test_completions_exclude_backends_that_cannot_serve_them(gateway_to):
    gw, up = await gateway_to("anthropic")
    async with client(gw.url) as via:
        with pytest.raises(openai.APIStatusError) as info:
            await via.completions.create(model="m", prompt="hi")
    assert info.value.status_code == 503
    assert "does not serve text completions" in info.value.body["message"]
    assert info.value.response.headers["x-should-retry"] == "false"
    assert up.requests == []


async def test_models_retrieve_by_id_with_slashes(gateway_to):
    gw, _ = await gateway_to("vllm", models=("org/model-7b", "m"))
    async with client(gw.url) as via:
        got = await via.models.retrieve("org/model-7b")
        with pytest.raises(openai.NotFoundError):
            await via.models.retrieve("org/other")
    assert (got.id, got.object, got.owned_by) == ("org/model-7b", "model", "nexus")
