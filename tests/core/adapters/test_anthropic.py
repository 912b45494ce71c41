"""The OpenAI <-> Anthropic translation layer: requests, replies, errors and SSE streams.

Streams are checked on event streams built here and on one captured from the fake backend's
`/v1/messages` over real HTTP; every split of the same bytes must give the same output.
"""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from nexus.core.adapters import anthropic_stream as mod
from nexus.core.adapters.anthropic import (
    ANTHROPIC,
    DEFAULT_MAX_TOKENS,
    StreamTranslator,
    TranslationError,
    Usage,
    from_anthropic,
    from_anthropic_error,
    to_anthropic,
)
from nexus.core.adapters.anthropic_messages import JSON_TOOL
from nexus.tools.fake_backend import FakeBackend, FakeBackendOptions

MODEL = "claude-test"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
WEATHER_SPEC = {"name": "get_weather", "description": "Weather in a city",
                "input_schema": WEATHER["function"]["parameters"]}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
USE = {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
JSON_SPEC = {"name": JSON_TOOL, "description": "Answer with the JSON value the user asked for.",
             "input_schema": {"type": "object"}}
JSON_CHOICE = {"type": "tool", "name": JSON_TOOL}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": list(messages), **extra}


def expect(*turns: tuple[str, list[Any]], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": r, "content": c} for r, c in turns],
            "max_tokens": DEFAULT_MAX_TOKENS, **extra}


HI = user("hi")
U_HI = ("user", [text("hi")])


# ---- request translation --------------------------------------------------------------------------
REQUESTS = [
    pytest.param(body(HI), expect(U_HI), id="plain-user"),
    pytest.param(body({"role": "system", "content": "be brief"}, HI,
                      {"role": "developer", "content": [text("no jokes"), text("")]},
                      {"role": "system", "content": [text("answer in French")]}),
                 expect(U_HI, system="be brief\n\nno jokes\n\nanswer in French"), id="system-messages-merged"),
    pytest.param(body(user("a"), user([text("b")]), assistant("c"), assistant([text("d")]), user("e")),
                 expect(("user", [text("a"), text("b")]), ("assistant", [text("c"), text("d")]),
                        ("user", [text("e")])), id="same-role-neighbours-merged"),
    pytest.param(body(user("a"), assistant(""), assistant(None), user("b"), user([])),
                 expect(("user", [text("a"), text("b")])), id="empty-messages-dropped-then-merged"),
    pytest.param(body(user([text("look"), {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                                                              "detail": "high"}}])),
                 expect(("user", [text("look"), {"type": "image", "source": {
                     "type": "base64", "media_type": "image/png", "data": PNG}}])), id="image-data-url"),
    pytest.param(body(user([{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}])),
                 expect(("user", [{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}])),
                 id="image-http-url"),
    pytest.param(body(user([text("hi"), {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
                            {"type": "file", "file": {"file_id": "f"}}])), expect(U_HI), id="unknown-parts-dropped"),
    pytest.param(body(HI, max_tokens=77), expect(U_HI, max_tokens=77), id="max-tokens"),
    pytest.param(body(HI, max_tokens=77, max_completion_tokens=55), expect(U_HI, max_tokens=55),
                 id="max-completion-tokens-wins"),
    pytest.param(body(HI, temperature=0.3, top_p=0.9), expect(U_HI, temperature=0.3, top_p=0.9), id="sampling"),
    pytest.param(body(HI, temperature=1.7), expect(U_HI, temperature=1.0), id="temperature-clamped"),
    pytest.param(body(HI, stop="END"), expect(U_HI, stop_sequences=["END"]), id="stop-string"),
    pytest.param(body(HI, stop=["a", "", "b"]), expect(U_HI, stop_sequences=["a", "b"]), id="stop-list"),
    pytest.param(body(HI, stop=None, stream=True), expect(U_HI, stream=True), id="stream"),
    pytest.param(body(HI, user="alice"), expect(U_HI, metadata={"user_id": "alice"}), id="user-to-metadata"),
    pytest.param(body(HI, n=2, seed=1, logprobs=True, frequency_penalty=1,
                      stream_options={"include_usage": True}, logit_bias={"1": 2}, service_tier="auto", x_custom=1,
                      stream=False),
                 expect(U_HI), id="unknown-fields-dropped"),
    pytest.param(body(HI, tools=[WEATHER]), expect(U_HI, tools=[WEATHER_SPEC]), id="tools-default-choice"),
    pytest.param(body(HI, tools=[WEATHER], tool_choice="auto"),
                 expect(U_HI, tools=[WEATHER_SPEC], tool_choice={"type": "auto"}), id="tool-choice-auto"),
    pytest.param(body(HI, tools=[WEATHER], tool_choice="required"),
                 expect(U_HI, tools=[WEATHER_SPEC], tool_choice={"type": "any"}), id="tool-choice-required"),
    pytest.param(body(HI, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
                 expect(U_HI, tools=[WEATHER_SPEC], tool_choice={"type": "tool", "name": "get_weather"}),
                 id="tool-choice-named"),
    pytest.param(body(HI, tools=[WEATHER], tool_choice="none"),
                 expect(U_HI, tools=[WEATHER_SPEC], tool_choice={"type": "none"}), id="tool-choice-none-is-sent"),
    pytest.param(body(HI, response_format={"type": "json_object"}),
                 expect(U_HI, tools=[JSON_SPEC], tool_choice=JSON_CHOICE), id="json-object-as-forced-tool"),
    pytest.param(body(HI, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}),
                 expect(U_HI, tools=[{**JSON_SPEC, "input_schema": SCHEMA}], tool_choice=JSON_CHOICE),
                 id="json-schema-as-forced-tool"),
    pytest.param(body(HI, response_format={"type": "text"}), expect(U_HI), id="text-format-is-the-default"),
    pytest.param(body(HI, tools=[WEATHER], parallel_tool_calls=False),
                 expect(U_HI, tools=[WEATHER_SPEC], tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
                 id="parallel-tool-calls-false"),
    pytest.param(body(HI, tools=[{"type": "function", "function": {"name": "ping"}}, {"type": "web_search"}]),
                 expect(U_HI, tools=[{"name": "ping", "input_schema": {"type": "object", "properties": {}}}]),
                 id="tool-without-parameters-and-builtin-dropped"),
    pytest.param(body(HI, assistant("Checking.", tool_calls=[CALL, {**CALL, "id": "call_2", "function": {
        "name": "now", "arguments": ""}}])),
                 expect(U_HI, ("assistant", [text("Checking."), USE,
                                             {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}])),
                 id="assistant-tool-calls"),
    pytest.param(body(HI, assistant(None, tool_calls=[CALL, {**CALL, "id": "call_2"}]),
                      {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                      {"role": "tool", "tool_call_id": "call_2", "content": [text("sunny")]},
                      {"role": "tool", "tool_call_id": "call_3", "content": ""}, user("thanks")),
                 expect(U_HI, ("assistant", [USE, {**USE, "id": "call_2"}]),
                        ("user", [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                                  {"type": "tool_result", "tool_use_id": "call_2", "content": [text("sunny")]},
                                  {"type": "tool_result", "tool_use_id": "call_3"}, text("thanks")])),
                 id="tool-results-merged-into-one-user-turn"),
    pytest.param(body(HI, assistant(None, tool_calls=[CALL]), user("also"),
                      {"role": "tool", "tool_call_id": "call_1", "content": "18C"}),
                 expect(U_HI, ("assistant", [USE]),
                        ("user", [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}, text("also")])),
                 id="tool-results-first-in-user-turn"),
]


@pytest.mark.parametrize(("request_body", "expected"), REQUESTS)
def test_to_anthropic(request_body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_anthropic(request_body, MODEL) == expected


BAD_REQUESTS = [
    pytest.param({"model": "m"}, "messages", id="no-messages"),
    pytest.param(body("hi"), "messages[0]", id="message-not-object"),  # type: ignore[arg-type]
    pytest.param(body({"role": "function", "content": "x"}), "messages[0].role", id="unknown-role"),
    pytest.param(body(user(5)), "messages[0].content", id="content-not-string-or-list"),
    pytest.param(body(user([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}])),
                 "messages[0].content[0].image_url", id="image-file-url"),
    pytest.param(body(user([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}])),
                 "messages[0].content[0].image_url", id="image-data-url-not-base64"),
    pytest.param(body(HI, assistant(None, tool_calls=[{**CALL, "function": {"name": "f", "arguments": "{nope"}}])),
                 "messages[1].tool_calls[0].function.arguments", id="tool-arguments-not-json"),
    pytest.param(body(HI, assistant(None, tool_calls=[{**CALL, "function": {"name": "f", "arguments": "[1]"}}])),
                 "messages[1].tool_calls[0].function.arguments", id="tool-arguments-not-object"),
    pytest.param(body(HI, assistant(None, tool_calls=[{"function": {"name": "f"}}])), "messages[1].tool_calls[0]",
                 id="tool-call-without-id"),
    pytest.param(body(HI, {"role": "tool", "content": "x"}), "messages[1].tool_call_id", id="tool-result-without-id"),
    pytest.param(body({"role": "system", "content": "only"}), "messages", id="only-system"),
    pytest.param(body(HI, max_tokens=0), "max_tokens", id="max-tokens-zero"),
    pytest.param(body(HI, max_tokens=True), "max_tokens", id="max-tokens-bool"),
    pytest.param(body(HI, max_completion_tokens="9"), "max_completion_tokens", id="max-completion-tokens-string"),
    pytest.param(body(HI, temperature="hot"), "temperature", id="temperature-string"),
    pytest.param(body(HI, stop=5), "stop", id="stop-number"),
    pytest.param(body(HI, stop=["a", 1]), "stop", id="stop-list-with-number"),
    pytest.param(body(HI, tools={"a": 1}), "tools", id="tools-not-list"),
    pytest.param(body(HI, tools=[{"type": "function", "function": {}}]), "tools[0].function.name",
                 id="tool-without-name"),
    pytest.param(body(HI, tools=[WEATHER], tool_choice="sometimes"), "tool_choice", id="tool-choice-unknown"),
    pytest.param(body(HI, tools=[WEATHER], response_format={"type": "json_object"}), "response_format",
                 id="json-mode-with-tools-cannot-be-emulated"),
    pytest.param(body(HI, response_format={"type": "json_schema", "json_schema": {"schema": {"type": "array"}}}),
                 "response_format.json_schema.schema", id="json-schema-not-an-object"),
    pytest.param(body(HI, response_format={"type": "yaml"}), "response_format.type", id="response-format-unknown"),
]


@pytest.mark.parametrize(("request_body", "param"), BAD_REQUESTS)
def test_to_anthropic_rejects_malformed_requests(request_body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        to_anthropic(request_body, MODEL)
    assert info.value.param == param
    assert isinstance(info.value, ValueError) and str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.sampled_from(["", "x", "auto", "none"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["type", "text", "url", "image_url", "function", "name", "arguments", "id", "parameters"]), inner, max_size=3),
    max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "x"])},
                                          optional={"content": json_values, "tool_calls": json_values,
                                                    "tool_call_id": json_values}), max_size=4)
bodies = st.fixed_dictionaries({"messages": messages}, optional={
    k: json_values for k in ["max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice", "user", "stream"]})


texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20).filter(str.strip)
# Well-formed conversations: optional system prompts, then user/assistant turns alternating from a user turn.
valid_bodies = st.builds(
    lambda system, turns, max_tokens: {
        "messages": [{"role": "system", "content": t} for t in system]
        + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)],
        **({"max_tokens": max_tokens} if max_tokens else {}),
    },
    st.lists(texts, max_size=2),
    st.lists(texts, min_size=1, max_size=5),
    st.none() | st.integers(1, 4096),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(valid_bodies.map(lambda b: (True, b)), bodies.map(lambda b: (False, b))))
def test_to_anthropic_only_ever_raises_translation_error(case: tuple[bool, dict[str, Any]]) -> None:
    """Half the examples are well-formed and must translate, so the checks on the output always run."""
    well_formed, request_body = case
    try:
        out = to_anthropic(request_body, MODEL)
    except TranslationError:
        assert not well_formed, request_body
        return
    if well_formed:
        turns = [m for m in request_body["messages"] if m["role"] != "system"]
        assert [(m["role"], [b["text"] for b in m["content"]]) for m in out["messages"]] == [
            (m["role"], [m["content"]]) for m in turns
        ]
        systems = [m["content"] for m in request_body["messages"] if m["role"] == "system"]
        assert out.get("system", "") == "\n\n".join(systems) or not systems
        assert out["max_tokens"] == request_body.get("max_tokens", out["max_tokens"]) > 0
    roles = [m["role"] for m in out["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)) and all(m["content"] for m in out["messages"])
    assert set(out) <= {"model", "messages", "max_tokens", "system", "temperature", "top_p", "stop_sequences",
                        "stream", "tools", "tool_choice", "metadata"}
    orjson.dumps(out)


# ---- response and error translation -------------------------------------------------------------
def message(content: list[Any], stop: str | None = "end_turn", **usage: int) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": usage or {"input_tokens": 12, "output_tokens": 5}}


def test_from_anthropic_text() -> None:
    out = from_anthropic(message([text("Hello, "), text("world")]), "gpt-4o", 1700000000)
    assert out == {"id": "msg_1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world"},
                                "logprobs": None, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}
    ChatCompletion.model_validate(out)


@pytest.mark.parametrize(("content", "expected_content"), [
    pytest.param([text("Let me check."), USE], "Let me check.", id="text-and-tool-use"),
    pytest.param([USE], None, id="tool-use-only"),
])
def test_from_anthropic_tool_use(content: list[Any], expected_content: str | None) -> None:
    out = from_anthropic(message([*content, {**USE, "id": "toolu_2", "input": {}}], "tool_use"), "m", 1)
    msg = out["choices"][0]["message"]
    assert msg["content"] == expected_content and out["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
    ChatCompletion.model_validate(out)


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("something_new", "stop"), (None, "stop")])
def test_from_anthropic_finish_reasons(stop_reason: str | None, finish: str) -> None:
    assert from_anthropic(message([text("x")], stop_reason), "m", 1)["choices"][0]["finish_reason"] == finish


def test_from_anthropic_usage_counts_cache_tokens_and_may_be_absent() -> None:
    out = from_anthropic(message([text("x")], input_tokens=10, output_tokens=3, cache_creation_input_tokens=100,
                                 cache_read_input_tokens=1000), "m", 1)
    assert out["usage"] == {"prompt_tokens": 1110, "completion_tokens": 3, "total_tokens": 1113,
                            "prompt_tokens_details": {"cached_tokens": 1000}}
    ChatCompletion.model_validate(out)
    assert "usage" not in from_anthropic({"id": "msg_2", "content": [text("x")], "stop_reason": "end_turn"}, "m", 1)
    assert Usage(3, 4).total_tokens == 7


def anthropic_error(kind: str, msg: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": msg}})


@pytest.mark.parametrize(("status", "raw", "expected"), [
    pytest.param(400, anthropic_error("invalid_request_error", "messages: bad"),
                 ("messages: bad", "invalid_request_error", None), id="invalid-request"),
    pytest.param(401, anthropic_error("authentication_error", "invalid x-api-key"),
                 ("invalid x-api-key", "invalid_request_error", "invalid_api_key"), id="authentication"),
    pytest.param(404, anthropic_error("not_found_error", "model: nope"),
                 ("model: nope", "invalid_request_error", "model_not_found"), id="not-found"),
    pytest.param(429, anthropic_error("rate_limit_error", "slow down"),
                 ("slow down", "rate_limit_error", "rate_limit_exceeded"), id="rate-limit"),
    pytest.param(529, anthropic_error("overloaded_error", "Overloaded"),
                 ("Overloaded", "server_error", "overloaded"), id="overloaded"),
    pytest.param(500, anthropic_error("api_error", "oops"), ("oops", "server_error", None), id="api-error"),
    pytest.param(418, anthropic_error("teapot_error", "short and stout"),
                 ("short and stout", "invalid_request_error", "teapot_error"), id="unknown-type-kept-as-code"),
    pytest.param(502, b"<html>Bad Gateway</html>", ("upstream error (HTTP 502): <html>Bad Gateway</html>",
                                                    "server_error", None), id="not-json"),
    pytest.param(429, b"", ("upstream error (HTTP 429)", "rate_limit_error", None), id="empty-body"),
    pytest.param(400, b'{"error": "flat"}', ('upstream error (HTTP 400): {"error": "flat"}',
                                             "invalid_request_error", None), id="unexpected-json"),
])
def test_from_anthropic_error(status: int, raw: bytes, expected: tuple[str, str, str | None]) -> None:
    message_, etype, code = expected
    assert from_anthropic_error(status, raw) == {"error": {"message": message_, "type": etype, "param": None,
                                                           "code": code}}


# ---- streaming ------------------------------------------------------------------------------------
def sse(*events: dict[str, Any], newline: bytes = b"\n") -> bytes:
    return b"".join(b"event: " + e["type"].encode() + newline + b"data: " + orjson.dumps(e) + newline * 2
                    for e in events)


def start(input_tokens: int = 10) -> dict[str, Any]:
    return {"type": "message_start", "message": {"id": "msg_s1", "type": "message", "role": "assistant",
                                                 "model": "claude-x", "content": [], "stop_reason": None,
                                                 "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}


def block(index: int, content_block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": content_block}


def delta(index: int, d: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": d}


def text_delta(index: int, t: str) -> dict[str, Any]:
    return delta(index, {"type": "text_delta", "text": t})


def stop_events(reason: str, output_tokens: int) -> list[dict[str, Any]]:
    return [{"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
             "usage": {"output_tokens": output_tokens}}, {"type": "message_stop"}]


TEXT_EVENTS = [start(), block(0, {"type": "text", "text": ""}), {"type": "ping"}, text_delta(0, "Hel"),
               text_delta(0, ""), text_delta(0, "lo, wörld ✓"), {"type": "content_block_stop", "index": 0},
               *stop_events("end_turn", 7)]
TOOL_EVENTS = [start(20), block(0, {"type": "text", "text": ""}), text_delta(0, "Let me check."),
               {"type": "content_block_stop", "index": 0},
               block(1, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
               delta(1, {"type": "input_json_delta", "partial_json": ""}),
               delta(1, {"type": "input_json_delta", "partial_json": '{"city": '}),
               delta(1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
               {"type": "content_block_stop", "index": 1},
               block(2, {"type": "thinking", "thinking": ""}), delta(2, {"type": "thinking_delta", "thinking": "hm"}),
               block(3, {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}),
               delta(3, {"type": "input_json_delta", "partial_json": "{}"}), *stop_events("tool_use", 30)]
ERROR_EVENTS = [start(), block(0, {"type": "text", "text": ""}), text_delta(0, "partial"),
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, text_delta(0, "x")]
STREAMS = {
    "text": sse(*TEXT_EVENTS),
    "text-crlf-comments-multiline-data": b": keep-alive\r\n\r\n" + sse(*TEXT_EVENTS[:3], newline=b"\r\n")
    + b"event: content_block_delta\r\ndata: {\"type\": \"content_block_delta\",\r\ndata: \"index\": 0, \"delta\": "
      b"{\"type\": \"text_delta\", \"text\": \"Hel\"}}\r\nid: 7\r\nretry: 100\r\n\r\n"
    + sse(*TEXT_EVENTS[4:], newline=b"\r"),
    "tools": sse(*TOOL_EVENTS),
    "error": sse(*ERROR_EVENTS),
}


def run(raw: bytes, pieces: list[bytes] | None = None, include_usage: bool = True) -> tuple[bytes, StreamTranslator]:
    translator = StreamTranslator("gpt-4o", 1700000000, include_usage)
    out = b"".join(translator.feed(p) for p in (pieces if pieces is not None else [raw]))
    return out + translator.flush(), translator


def parse(out: bytes) -> list[Any]:
    """The OpenAI SSE events: chunk dicts (validated with the openai SDK), error dicts and "[DONE]"."""
    assert out.endswith(b"\n\n")
    events: list[Any] = []
    for frame in out[:-2].split(b"\n\n"):
        assert frame.startswith(b"data: ") and b"\n" not in frame
        payload = frame[6:]
        events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
        if isinstance(events[-1], dict) and "error" not in events[-1]:
            ChatCompletionChunk.model_validate(events[-1])
    return events


def assemble(events: list[Any]) -> dict[str, Any]:
    chunks = [e for e in events if isinstance(e, dict) and "error" not in e]
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        for call in d["delta"].get("tool_calls", ()):
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.get("id") or ""
            entry["name"] += call.get("function", {}).get("name") or ""
            entry["arguments"] += call.get("function", {}).get("arguments") or ""
    return {"role": deltas[0]["delta"].get("role") if deltas else None,
            "text": "".join(d["delta"].get("content") or "" for d in deltas),
            "tool_calls": [calls[i] for i in sorted(calls)],
            "finish": [d["finish_reason"] for d in deltas if d["finish_reason"]],
            "usage": [c["usage"] for c in chunks if not c["choices"]],
            "ids": {c["id"] for c in chunks}, "done": events[-1] == "[DONE]",
            "error": next((e["error"] for e in events if isinstance(e, dict) and "error" in e), None)}


FEEDS = {"one-chunk": lambda raw: [raw], "byte-by-byte": lambda raw: [raw[i:i + 1] for i in range(len(raw))],
         "two-halves": lambda raw: [raw[: len(raw) // 2], raw[len(raw) // 2:]]}


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
@pytest.mark.parametrize("stream", ["text", "text-crlf-comments-multiline-data"])
def test_stream_text(stream: str, feed: Any) -> None:
    out, tr = run(STREAMS[stream], feed(STREAMS[stream]))
    got = assemble(parse(out))
    assert got == {"role": "assistant", "text": "Hello, wörld ✓", "tool_calls": [], "finish": ["stop"],
                   "usage": [{"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}],
                   "ids": {"msg_s1"}, "done": True, "error": None}
    assert tr.done and tr.usage == Usage(10, 7) and tr.finish_reason == "stop" and tr.error is None


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
def test_stream_tool_calls(feed: Any) -> None:
    events = parse(run(STREAMS["tools"], feed(STREAMS["tools"]))[0])
    got = assemble(events)
    assert got["text"] == "Let me check." and got["finish"] == ["tool_calls"] and got["done"]
    assert got["tool_calls"] == [{"id": "toolu_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                                 {"id": "toolu_2", "name": "now", "arguments": "{}"}]
    assert got["usage"] == [{"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50}]
    call_deltas = [e["choices"][0]["delta"] for e in events if isinstance(e, dict) and e["choices"]
                   and "tool_calls" in e["choices"][0]["delta"]]
    assert call_deltas[0]["tool_calls"] == [
        {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]


def test_stream_without_include_usage_still_tracks_usage() -> None:
    out, tr = run(STREAMS["text"], include_usage=False)
    events = parse(out)
    assert all("usage" not in e for e in events if isinstance(e, dict))
    assert assemble(events)["usage"] == [] and tr.usage == Usage(10, 7)


@pytest.mark.parametrize("feed", FEEDS.values(), ids=FEEDS.keys())
def test_stream_error_event_ends_the_stream(feed: Any) -> None:
    out, tr = run(STREAMS["error"], feed(STREAMS["error"]))
    got = assemble(parse(out))
    assert got["text"] == "partial" and not got["done"] and got["finish"] == []
    assert got["error"] == tr.error == {"message": "Overloaded", "type": "server_error", "param": None,
                                        "code": "overloaded"}
    assert tr.done and tr.feed(sse(*TEXT_EVENTS)) == b"" and tr.flush() == b""


def test_stream_error_before_content_is_the_only_output() -> None:
    """Nothing reached the client but the error, so the gateway may still try another backend."""
    out, tr = run(sse(start(), {"type": "ping"}, *ERROR_EVENTS[3:]))
    assert parse(out) == [{"error": tr.error}] and tr.done and tr.error is not None
    assert tr.error["code"] == "overloaded" and tr.usage == Usage(10, 1)


@pytest.mark.parametrize(("raw", "sent"), [
    pytest.param(b"", None, id="empty"),
    pytest.param(sse(*TEXT_EVENTS[:2]), None, id="no-content-yet"),
    pytest.param(sse(*TEXT_EVENTS[:5]) + b"event: content_block_delta\ndata: {", "Hel", id="cut-mid-event"),
])
def test_stream_cut_short_is_left_to_the_caller(raw: bytes, sent: str | None) -> None:
    """`flush()` adds no error event: `done` stays False and the gateway ends the stream itself."""
    out, tr = run(raw)
    assert not tr.done and tr.error is None
    assert (assemble(parse(out))["text"] if out else None) == sent and b"[DONE]" not in out


def test_stream_invalid_json_is_an_error() -> None:
    out, tr = run(sse(start()) + b"data: {not json\n\n" + sse(*TEXT_EVENTS[1:]))
    assert parse(out) == [{"error": tr.error}] and tr.done and tr.error is not None
    assert tr.error["code"] == "upstream_invalid_stream" and tr.error["type"] == "server_error"


def test_stream_oversized_line_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mod, "MAX_SSE_LINE", 64)
    tr = StreamTranslator("m", 1, False)
    assert tr.feed(b"data: " + b"x" * 40) == b""
    assert parse(tr.feed(b"x" * 40)) == [{"error": tr.error}]
    assert tr.error is not None and tr.error["code"] == "upstream_invalid_stream"


def test_stream_after_done_ignores_further_input() -> None:
    out, tr = run(STREAMS["text"] + b"data: garbage\n\n" + sse(*TEXT_EVENTS))
    assert out == run(STREAMS["text"])[0] and tr.done


def splits(raw: bytes) -> st.SearchStrategy[list[bytes]]:
    """Any split of `raw` into pieces; cuts favour the bytes around line ends, where parsers slip."""
    edges = sorted({i + d for i, c in enumerate(raw) if c in b"\r\n" for d in (0, 1)}) or [0]
    cuts = st.lists(st.integers(0, len(raw)) | st.sampled_from(edges), max_size=24).map(sorted)
    return cuts.map(lambda cs: [raw[a:b] for a, b in itertools.pairwise([0, *cs, len(raw)])])


@pytest.mark.parametrize("stream", STREAMS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_stream_output_is_independent_of_chunking(stream: str, data: st.DataObject) -> None:
    raw = STREAMS[stream]
    reference, ref_tr = run(raw)
    out, tr = run(raw, data.draw(splits(raw)))
    assert out == reference
    assert (tr.usage, tr.done, tr.error, tr.finish_reason) == (ref_tr.usage, ref_tr.done, ref_tr.error,
                                                               ref_tr.finish_reason)


# ---- against the fake backend over real HTTP ------------------------------------------------------
OPENAI_BODY = body({"role": "system", "content": "be brief"}, user("hello there, router"), user([text("and you")]),
                   max_tokens=500, stream_options={"include_usage": True})


@pytest.mark.parametrize(("max_tokens", "expected_text", "finish"), [
    (500, "echo: hello there, router and you", "stop"), (2, "echo: he", "length")], ids=["end-turn", "max-tokens"])
async def test_fake_backend_json_and_stream_agree(max_tokens: int, expected_text: str, finish: str) -> None:
    async with FakeBackend(FakeBackendOptions(models=["claude-fake"], stream_chunks=7)) as fb, \
            aiohttp.ClientSession() as http:
        url, headers = f"{fb.url}/v1/messages", {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
        request = to_anthropic({**OPENAI_BODY, "max_tokens": max_tokens}, "claude-fake")
        async with http.post(url, data=orjson.dumps(request), headers=headers) as resp:
            assert resp.status == 200
            reply = from_anthropic(orjson.loads(await resp.read()), "gpt-4o", 1700000000)
        live = StreamTranslator("gpt-4o", 1700000000, include_usage=True)
        raw, out = bytearray(), bytearray()
        async with http.post(url, data=orjson.dumps({**request, "stream": True}), headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            async for chunk in resp.content.iter_any():
                raw += chunk
                out += live.feed(chunk)
        out += live.flush()
        assert fb.requests[0]["body"]["system"] == "be brief"
        assert fb.requests[0]["body"]["messages"] == [{"role": "user", "content": [
            text("hello there, router"), text("and you")]}]
    ChatCompletion.model_validate(reply)
    assert reply["choices"][0]["message"]["content"] == expected_text
    assert reply["choices"][0]["finish_reason"] == finish
    got = assemble(parse(bytes(out)))
    assert got["text"] == reply["choices"][0]["message"]["content"] and got["finish"] == [finish] and got["done"]
    assert got["usage"] == [reply["usage"]] and live.usage is not None and live.usage.to_openai() == reply["usage"]
    assert bytes(out) == run(bytes(raw))[0] == run(bytes(raw), FEEDS["byte-by-byte"](bytes(raw)))[0]

    @settings(max_examples=100, deadline=None)
    @given(splits(bytes(raw)))
    def any_split_gives_the_same_output(pieces: list[bytes]) -> None:
        assert run(bytes(raw), pieces)[0] == bytes(out)

    any_split_gives_the_same_output()


@pytest.mark.parametrize(("opts", "model", "status", "etype", "code"), [
    pytest.param({}, "nope", 404, "invalid_request_error", "model_not_found", id="unknown-model"),
    pytest.param({"fail_mode": "500"}, "claude-fake", 500, "server_error", None, id="injected-500"),
    pytest.param({"api_key": "k"}, "claude-fake", 401, "invalid_request_error", "invalid_api_key", id="bad-key"),
])
async def test_fake_backend_errors_become_openai_envelopes(opts: dict[str, Any], model: str, status: int,
                                                         etype: str, code: str | None) -> None:
    async with FakeBackend(FakeBackendOptions(models=["claude-fake"], **opts)) as fb, aiohttp.ClientSession() as http:
        resp = await http.post(f"{fb.url}/v1/messages", data=orjson.dumps(to_anthropic(body(HI), model)))
        async with resp:
            assert resp.status == status
            envelope = from_anthropic_error(resp.status, await resp.read())
    assert envelope["error"]["type"] == etype and envelope["error"]["code"] == code
    assert envelope["error"]["message"] and envelope["error"]["param"] is None


async def test_fake_backend_stream_without_usage() -> None:
    async with FakeBackend(FakeBackendOptions(models=["claude-fake"], report_usage=False)) as fb, \
            aiohttp.ClientSession() as http:
        request = to_anthropic({**OPENAI_BODY, "stream": True}, "claude-fake")
        async with http.post(f"{fb.url}/v1/messages", data=orjson.dumps(request)) as resp:
            raw = await resp.read()
    out, tr = run(raw)
    got = assemble(parse(out))
    assert got["text"] == "echo: hello there, router and you" and got["done"] and got["finish"] == ["stop"]
    assert got["usage"] == [] and tr.usage is None


def test_emulated_json_mode_answers_json_text() -> None:
    used = {"type": "tool_use", "id": "toolu_9", "name": JSON_TOOL, "input": {"city": "Paris"}}
    out = from_anthropic(message([used], "tool_use"), "m", 1, json_tool=True)
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": '{"city":"Paris"}'}
    assert choice["finish_reason"] == "stop"
    # without the emulation the same block is a tool call
    assert from_anthropic(message([used], "tool_use"), "m", 1)["choices"][0]["finish_reason"] == "tool_calls"


def test_emulated_json_mode_streams_as_content() -> None:
    raw = sse(start(), block(0, {"type": "tool_use", "id": "toolu_9", "name": JSON_TOOL, "input": {}}),
              delta(0, {"type": "input_json_delta", "partial_json": '{"city": '}),
              delta(0, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
              {"type": "content_block_stop", "index": 0}, *stop_events("tool_use", 5))
    tr = StreamTranslator("m", 1, False, json_tool=True)
    events = parse(tr.feed(raw) + tr.flush())
    msg = assemble(events)
    assert (msg["text"], msg["finish"], msg["tool_calls"]) == ('{"city": "Paris"}', ["stop"], [])


def test_the_adapter_carries_the_emulation_from_request_to_answer() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}
    call = ANTHROPIC.encode(body, b"", path="/v1/chat/completions", model="claude", stream=False, ask_usage=False)
    assert call.json_answer and not ANTHROPIC.encode({**body, "response_format": None}, b"", path="", model="c",
                                                     stream=False, ask_usage=False).json_answer
    used = {"type": "tool_use", "id": "toolu_9", "name": JSON_TOOL, "input": {"a": 1}}
    answer = ANTHROPIC.answer(orjson.dumps(message([used], "tool_use")), model="m", created=1, embeddings=False,
                              json_answer=call.json_answer)
    assert orjson.loads(answer.body)["choices"][0]["message"]["content"] == '{"a":1}'
