"""The inbound translations (nexus/core/inbound): requests to chat, chat answers back, and chat streams into each
protocol's events, as matrices of written-out cases; stream output never depends on how the bytes were split."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus.core.gateway_errors import BadRequest
from nexus.core.inbound import anthropic_messages as am
from nexus.core.inbound import ollama
from nexus.core.inbound import responses as rs
from nexus.core.usage import Usage

HI = {"role": "user", "content": "hi"}
FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(("body", "chat"), [
    pytest.param({"model": "m", "max_tokens": 5, "messages": [HI]},
                 {"model": "m", "max_tokens": 5, "messages": [HI]}, id="plain"),
    pytest.param({"model": "m", "max_tokens": 5, "messages": [HI], "system": "s", "stop_sequences": ["x"],
                  "temperature": 0.2, "metadata": {"user_id": "u"}, "stream": True, "top_k": 3},
                 {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "s"}, HI], "stop": ["x"],
                  "temperature": 0.2, "user": "u", "stream": True, "stream_options": {"include_usage": True}},
                 id="system-stop-user-stream-top-k-dropped"),
    pytest.param({"model": "m", "max_tokens": 5, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                  "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, "messages": [
                      HI, {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {
                          "type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
                      {"role": "user", "content": [{"type": "text", "text": "and"}, {
                          "type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "r"}],
                          "is_error": True}]}]},
                 {"model": "m", "max_tokens": 5, "tools": [FN], "tool_choice": "required", "parallel_tool_calls": False,
                  "messages": [HI, {"role": "assistant", "content": "ok", "tool_calls": [
                      {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
                      {"role": "tool", "tool_call_id": "t1", "content": "Error: r"},
                      {"role": "user", "content": "and"}]}, id="tools-results-first"),
    pytest.param({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}]}]},
                 {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                     {"type": "image_url", "image_url": {"url": "https://x/i.png"}}]}]}, id="image-url"),
])
def test_anthropic_to_chat(body: dict[str, Any], chat: dict[str, Any]) -> None:
    assert am.to_chat(body) == chat


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({"model": "m", "messages": [HI]}, "max_tokens", id="no-max-tokens"),
    pytest.param({"model": "m", "max_tokens": 1, "messages": []}, "messages", id="no-messages"),
    pytest.param({"model": "m", "max_tokens": 1, "messages": [HI], "nope": 1}, "nope", id="unknown-field"),
    pytest.param({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
                 "messages.0.role", id="system-role"),
    pytest.param({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}]}]}, "messages.0.content.0.type", id="document"),
    pytest.param({"model": "m", "max_tokens": 1, "messages": [HI], "tools": [{"type": "web_search_20250305",
                                                                              "name": "w"}]},
                 "tools.0.type", id="server-tool"),
    pytest.param({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": ""}]}]}, "messages.0.content.0.tool_use_id", id="result-without-id"),
])
def test_anthropic_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        am.to_chat(body)
    assert info.value.param == param


CHAT_ANSWER = {"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
    "role": "assistant", "content": "let me see", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


def test_answers_in_each_protocol() -> None:
    assert am.from_chat(CHAT_ANSWER, "m", "msg_1") == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [
            {"type": "text", "text": "let me see"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 3}}
    resp = rs.from_chat(CHAT_ANSWER, "m", "r1", 5, {"input": "x"})
    assert [(o["type"], o.get("call_id")) for o in resp["output"]] == [("message", None), ("function_call", "t1")]
    assert resp["usage"]["total_tokens"] == 10 and resp["status"] == "completed"
    cut = rs.from_chat({**CHAT_ANSWER, "choices": [{**CHAT_ANSWER["choices"][0], "finish_reason": "length"}]},
                       "m", "r1", 5, {})
    assert (cut["status"], cut["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    ol = ollama.from_chat(CHAT_ANSWER, "m", "t", generate=False)
    assert ol["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    assert (ol["done"], ol["prompt_eval_count"], ol["eval_count"]) == (True, 7, 3)


@pytest.mark.parametrize(("body", "chat"), [
    pytest.param({"model": "m", "input": "hi", "instructions": "be", "max_output_tokens": 9},
                 {"model": "m", "messages": [{"role": "system", "content": "be"}, HI], "max_tokens": 9},
                 id="string-input"),
    pytest.param({"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "x"},
        {"type": "function_call_output", "call_id": "c2", "output": "y"}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "tool_choice": "required",
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": True}}},
                 {"model": "m", "messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": None,
                  "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                                 {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "x"},
                     {"role": "tool", "tool_call_id": "c2", "content": "y"}],
                  "tools": [FN], "tool_choice": "required", "response_format": {"type": "json_schema", "json_schema": {
                      "name": "s", "schema": {"type": "object"}, "strict": True}}}, id="items-calls-format"),
])
def test_responses_to_chat(body: dict[str, Any], chat: dict[str, Any]) -> None:
    assert rs.to_chat(body) == chat


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({"model": "m", "input": "x", "previous_response_id": "r"}, "previous_response_id", id="stateful"),
    pytest.param({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools.0.type", id="builtin-tool"),
    pytest.param({"model": "m", "input": []}, "input", id="empty-input"),
    pytest.param({"model": "m", "input": "x", "zzz": 1}, "zzz", id="unknown"),
])
def test_responses_refusals_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        rs.to_chat(body)
    assert info.value.param == param


@pytest.mark.parametrize(("body", "chat"), [
    pytest.param({"model": "m", "messages": [HI], "stream": False, "format": "json",
                  "options": {"temperature": 0.1, "num_predict": 20, "stop": "x", "num_ctx": 4096}},
                 {"model": "m", "messages": [HI], "temperature": 0.1, "max_tokens": 20, "stop": ["x"],
                  "response_format": {"type": "json_object"}}, id="options-format"),
    pytest.param({"model": "m", "messages": [HI], "options": {"num_predict": -1}},
                 {"model": "m", "messages": [HI], "stream": True, "stream_options": {"include_usage": True}},
                 id="absent-stream-streams"),
])
def test_ollama_chat_to_chat(body: dict[str, Any], chat: dict[str, Any]) -> None:
    assert ollama.chat_to_chat(body) == chat


def test_ollama_generate_and_embed() -> None:
    assert ollama.generate_to_chat({"model": "m", "prompt": "p", "system": "s", "stream": False}) == {
        "model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]}
    assert ollama.embed_to_embeddings({"model": "m", "input": ["a"]}) == {"model": "m", "input": ["a"]}
    with pytest.raises(BadRequest) as info:
        ollama.generate_to_chat({"model": "m", "prompt": "p", "suffix": "q"})
    assert info.value.param == "suffix"


def _chat_stream() -> bytes:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def ev(delta: dict[str, Any], fin: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]}) \
            + b"\n\n"
    return b"".join([
        ev({"role": "assistant", "content": ""}), ev({"content": "Hel"}), ev({"content": "lo"}),
        ev({"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        ev({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        ev({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), ev({}, "tool_calls"),
        b": keep-alive\n\n",
        b"data: " + orjson.dumps({**base, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}})
        + b"\n\n", b"data: [DONE]\n\n"])


RENDERERS = {
    "anthropic": lambda: am.MessagesStream("m", "msg_1", lambda u: 0.5),
    "responses": lambda: rs.ResponsesStream("m", "r1", 1, {"input": "x"}, lambda u: 0.5),
    "ollama": lambda: ollama.OllamaStream("m", "t", False, lambda u: 0.5),
}


def _events(name: str, out: bytes) -> list[dict[str, Any]]:
    if name == "ollama":
        return [orjson.loads(line) for line in out.splitlines()]
    return [orjson.loads(line[6:]) for line in out.decode().split("\n") if line.startswith("data: ")]


def test_streams_carry_text_tools_usage_and_cost() -> None:
    whole = _chat_stream()
    a = _events("anthropic", RENDERERS["anthropic"]().feed(whole))
    assert [e["type"] for e in a] == ["message_start", "content_block_start", "ping", "content_block_delta",
                                      "content_block_delta", "content_block_stop", "content_block_start",
                                      "content_block_delta", "content_block_delta", "content_block_stop",
                                      "message_delta", "message_stop"]
    assert a[-2]["delta"]["stop_reason"] == "tool_use" and a[-2]["usage"] == {"input_tokens": 4, "output_tokens": 6}
    assert a[-2]["nexus_cost_usd"] == 0.5 and a[6]["content_block"]["type"] == "tool_use"
    r = _events("responses", RENDERERS["responses"]().feed(whole))
    assert [e["sequence_number"] for e in r] == list(range(len(r)))
    final = r[-1]["response"]
    assert r[-1]["type"] == "response.completed" and final["nexus_cost_usd"] == 0.5
    assert [(o["type"], o.get("arguments")) for o in final["output"]] == [("message", None), ("function_call",
                                                                                               '{"a":1}')]
    o = _events("ollama", RENDERERS["ollama"]().feed(whole))
    assert "".join(x["message"]["content"] for x in o) == "Hello"
    assert o[-2]["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    assert (o[-1]["done"], o[-1]["eval_count"], o[-1]["nexus_cost_usd"]) == (True, 6, 0.5)


@pytest.mark.parametrize("name", list(RENDERERS))
def test_a_stream_error_ends_in_the_protocols_error(name: str) -> None:
    r = RENDERERS[name]()
    head = b"\n\n".join(_chat_stream().split(b"\n\n")[:3]) + b"\n\n"  # three whole events, then the error
    out = r.feed(head + b'data: {"error": {"message": "boom"}}\n\n' + b"data: [DONE]\n\n")
    assert r.done and b"boom" in out and out.count(b"boom") == 1
    assert r.feed(b"data: [DONE]\n\n") == b""  # ended: further input is ignored


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_stream_output_does_not_depend_on_chunking(data: st.DataObject) -> None:
    whole = _chat_stream()
    cuts = sorted(data.draw(st.lists(st.integers(1, len(whole) - 1), max_size=12, unique=True)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    for name, make in RENDERERS.items():
        one, many = make(), make()
        assert b"".join(many.feed(p) for p in pieces) == one.feed(whole), name


def test_usage_absent_means_no_cost_and_zero_counts() -> None:
    r = am.MessagesStream("m", "msg_1", lambda u: 1.0)
    out = _events("anthropic", r.feed(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\ndata: [DONE]\n\n'))
    assert "nexus_cost_usd" not in out[-2] and out[-2]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert r.usage is None and Usage() == Usage(0, 0)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 5) | st.floats(-1, 2) | st.sampled_from(
    ["", "m", "user", "assistant", "tool", "system", "text", "image", "tool_use", "tool_result", "function",
     "function_call", "function_call_output", "json", "auto", "none", "any", "input_text", "input_image"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["type", "role", "content", "text", "name", "id", "input", "source", "tool_use_id", "call_id", "arguments",
         "output", "images", "function", "tool_calls", "media_type", "data", "url", "schema", "format"]), inner,
        max_size=4), max_leaves=12)
FIELDS = st.sampled_from(["model", "messages", "max_tokens", "system", "tools", "tool_choice", "stream", "input",
                          "instructions", "text", "prompt", "options", "format", "stop_sequences", "metadata"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS, JSON, max_size=6), st.sampled_from(["anthropic", "responses", "chat", "generate"]))
@example({"model": "m", "messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}, "chat")
@example({"model": "m", "messages": [HI], "options": {"num_predict": "many"}}, "chat")
def test_any_body_translates_or_is_refused_naming_a_field(body: dict[str, Any], which: str) -> None:
    from nexus.core.pipeline.requirements import extract_requirements
    from nexus.core.schemas import parse_chat

    translate = {"anthropic": am.to_chat, "responses": rs.to_chat, "chat": ollama.chat_to_chat,
                 "generate": ollama.generate_to_chat}[which]
    try:
        chat = translate(body)
        parse_chat(chat)
    except BadRequest as exc:
        assert exc.param, exc.message
        return
    orjson.dumps(chat)  # what goes upstream is JSON
    extract_requirements(chat)
