"""The OpenAI-compatible adapter: body checks, error envelopes, and the stream pass-through."""

from __future__ import annotations

import orjson
import pytest

from nexus.core.adapters.openai import OpenAIStream, check_body, error_envelope


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def delta(text: str, usage: object = None) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}],
            "usage": usage}


STREAM = [event(delta("He")), event(delta("llo")), b": keep-alive\n\n", event(delta(", you")),
          event({"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
          b"data: [DONE]\n\n"]


def run(chunks: list[bytes], **kw: bool) -> tuple[bytes, OpenAIStream]:
    tr = OpenAIStream(**kw)
    out = b"".join(tr.feed(c) for c in chunks) + tr.flush()
    return out, tr


@pytest.mark.parametrize("drop", [True, False], ids=["nexus-asked-usage", "client-asked-usage"])
def test_the_output_does_not_depend_on_chunking(drop: bool) -> None:
    whole = b"".join(STREAM)
    ways = {
        "one chunk": [whole],
        "per event": STREAM,
        "per byte": [whole[i:i + 1] for i in range(len(whole))],
        "odd cuts": [whole[i:i + 37] for i in range(0, len(whole), 37)],
    }
    results = {name: run(chunks, drop_usage_event=drop) for name, chunks in ways.items()}
    outputs = {out for out, _ in results.values()}
    assert len(outputs) == 1, results
    out, tr = results["per event"]
    assert (b'"usage":{' in out) is not drop and out.endswith(b"data: [DONE]\n\n") and tr.done
    assert (tr.usage.prompt_tokens, tr.usage.completion_tokens) == (5, 3) and tr.error is None
    assert b": keep-alive\n\n" in out  # comments pass once the stream has started


@pytest.mark.parametrize(
    ("first", "message"),
    [
        pytest.param(b"data: <html>\n\n", "not a JSON object", id="html"),
        pytest.param(b'data: {"error": {"message": "boom", "code": "overloaded"}}\n\n', "boom", id="error-event"),
        pytest.param(b'data: {"id": "x"}\n\n', "without a 'choices' list", id="no-choices"),
        pytest.param(b"data: [DONE]\n\n", "ended before its first event", id="done-first"),
    ],
)
def test_a_bad_first_event_is_an_error_before_any_output(first: bytes, message: str) -> None:
    out, tr = run([first, event(delta("never"))])
    assert tr.error is not None and message in tr.error["message"] and tr.done
    assert b"never" not in out


def test_garbage_mid_stream_ends_with_an_error_event() -> None:
    out, tr = run([event(delta("ok")), b"data: <html>oops</html>\n\n", event(delta("after"))])
    assert out.startswith(event(delta("ok"))) and b"after" not in out and b"<html>" not in out
    assert tr.error is not None and b'"upstream_invalid_stream"' in out


@pytest.mark.parametrize(
    ("usage", "problem"),
    [
        pytest.param({"prompt_tokens": "abc"}, "usage.prompt_tokens", id="string"),
        pytest.param({"prompt_tokens": 1, "completion_tokens": -1}, "usage.completion_tokens", id="negative"),
        pytest.param([1, 2], "not an object", id="list"),
    ],
)
def test_invalid_stream_usage_counts_as_missing(usage: object, problem: str) -> None:
    _, tr = run([event(delta("x")), event({"choices": [], "usage": usage}), b"data: [DONE]\n\n"])
    assert tr.usage is None and problem in (tr.usage_problem or "")


def test_counting_content_when_no_usage_is_expected() -> None:
    _, tr = run([*STREAM[:4], b"data: [DONE]\n\n"], count_content=True)
    assert tr.completion_chars == len("Hello, you")


@pytest.mark.parametrize(
    ("payload", "embeddings", "ok"),
    [
        pytest.param(b'{"choices": [{"message": {"content": "x"}}]}', False, True, id="chat"),
        pytest.param(b'{"data": [{"embedding": [0.1]}]}', True, True, id="embeddings"),
        pytest.param(b"<html></html>", False, False, id="html"),
        pytest.param(b'{"choices": [', False, False, id="truncated"),
        pytest.param(b'{"error": {"message": "x"}}', False, False, id="error-object"),
        pytest.param(b'{"choices": ["x"]}', False, False, id="choice-not-object"),
    ],
)
def test_check_body(payload: bytes, embeddings: bool, ok: bool) -> None:
    obj, problem = check_body(payload, embeddings)
    assert (obj is not None) is ok and (problem is None) is ok


def test_error_envelopes_keep_the_backends_own_or_build_one() -> None:
    sent = b'{"error": {"message": "bad thing", "type": "invalid_request_error"}}'
    own = orjson.loads(error_envelope(400, sent, "b"))
    assert own["error"]["message"] == "bad thing"
    built = orjson.loads(error_envelope(422, b"<html>\x00nope</html>", "b"))["error"]
    assert built["message"].startswith("backend b answered HTTP 422: <html> nope") and built["code"] == "upstream_422"
    detail = orjson.loads(error_envelope(400, b'{"detail": "field x"}', "b"))["error"]
    assert detail["message"] == "backend b answered HTTP 400: field x"
