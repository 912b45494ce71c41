"""Request features are requirements: a backend that cannot serve one is excluded with its reason, per backend
type (the adapter's limits) and per model (config flags), and the request still goes to one that can."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.core.adapters.registry import kind_of
from nexus.core.capabilities import Feature, features, unsupported
from nexus.core.model import ModelSpec
from nexus.core.pipeline import Reject, Route
from nexus.core.pipeline.intent import Requirements
from nexus.core.pipeline.requirements import completion_requirements, extract_requirements
from tests.core.pipeline.helpers import backend, chat, run, snapshot

SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


@pytest.mark.parametrize(
    ("extra", "wanted"),
    [
        pytest.param({}, set(), id="plain"),
        pytest.param({"response_format": {"type": "json_object"}}, {Feature.JSON_MODE}, id="json-object"),
        pytest.param({"response_format": SCHEMA}, {Feature.JSON_MODE, Feature.JSON_SCHEMA}, id="json-schema"),
        pytest.param({"response_format": {"type": "text"}}, set(), id="text-format"),
        pytest.param({"n": 2}, {Feature.MULTIPLE_CHOICES}, id="n-2"),
        pytest.param({"n": 1}, set(), id="n-1"),
        pytest.param({"n": True}, set(), id="n-bool-ignored"),
        pytest.param({"logprobs": True}, {Feature.LOGPROBS}, id="logprobs"),
        pytest.param({"logprobs": False}, set(), id="logprobs-false"),
        pytest.param({"top_logprobs": 3}, {Feature.LOGPROBS}, id="top-logprobs"),
        pytest.param({"tools": [{"type": "function", "function": {"name": "f"}}]}, {Feature.TOOLS}, id="tools"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                     {Feature.VISION}, id="vision"),
    ],
)
def test_chat_features_are_extracted(extra: dict[str, Any], wanted: set[Feature]) -> None:
    assert features(extract_requirements(chat(**extra))) == wanted


def test_stream_is_extracted_and_every_adapter_streams() -> None:
    req = extract_requirements(chat(stream=True))
    assert req.stream and features(req) == frozenset()


@pytest.mark.parametrize(
    ("body", "req"),
    [
        pytest.param({"prompt": "abcdefgh", "max_tokens": 5},
                     Requirements(input_tokens=2, max_output_tokens=5, completions=True), id="string"),
        pytest.param({"prompt": ["abcd", "abcd", 7], "n": 3, "logprobs": 2, "stream": True},
                     Requirements(input_tokens=2, stream=True, choices=3, logprobs=True, completions=True), id="list"),
        pytest.param({"prompt": None, "logprobs": 0}, Requirements(completions=True), id="nothing"),
    ],
)
def test_completion_requirements(body: dict[str, Any], req: Requirements) -> None:
    assert completion_requirements(body) == req


@pytest.mark.parametrize(
    ("btype", "lacks"),
    [
        pytest.param("vllm", set(), id="vllm"),
        pytest.param("ollama", {Feature.MULTIPLE_CHOICES}, id="ollama"),
        pytest.param("openai", set(), id="openai"),
        pytest.param("anthropic", {Feature.MULTIPLE_CHOICES, Feature.LOGPROBS, Feature.COMPLETIONS}, id="anthropic"),
        pytest.param("google", {Feature.COMPLETIONS}, id="google"),
    ],
)
def test_adapter_limits_apply_whatever_the_config_says(btype: str, lacks: set[Feature]) -> None:
    spec = ModelSpec("m", vision=True)
    assert kind_of(btype).lacks == lacks
    assert unsupported(spec, kind_of(btype).lacks) == lacks


def test_config_flags_add_to_the_adapter_limits() -> None:
    spec = ModelSpec("m", json_schema=False, logprobs=False)
    assert unsupported(spec, kind_of("vllm").lacks) == {Feature.VISION, Feature.JSON_SCHEMA, Feature.LOGPROBS}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        pytest.param({"n": 2}, "model m on this backend cannot return several choices (n > 1)", id="n"),
        pytest.param({"logprobs": True}, "model m on this backend does not return log probabilities", id="logprobs"),
    ],
)
def test_anthropic_is_excluded_for_what_it_cannot_carry(extra: dict[str, Any], reason: str) -> None:
    snap = snapshot([backend("claude", "anthropic", priority=100), backend("local", "vllm")])
    d = run(snap, body=chat(**extra))
    assert isinstance(d, Route) and d.backend.name == "local"
    assert [(r.agent_id, r.reason) for r in d.reasons] == [("claude", reason)]
    only = run(snapshot([backend("claude", "anthropic")]), body=chat(**extra))
    assert isinstance(only, Reject) and [r.reason for r in only.reasons] == [reason]


def test_json_modes_stay_on_anthropic_which_emulates_them() -> None:
    snap = snapshot([backend("claude", "anthropic")])
    for fmt in ({"type": "json_object"}, SCHEMA):
        d = run(snap, body=chat(response_format=fmt))
        assert isinstance(d, Route) and d.backend.name == "claude" and not d.reasons


def test_a_model_flag_excludes_only_that_backend() -> None:
    snap = snapshot([backend("a", models=[{"name": "m", "json_schema": False}], priority=100), backend("b")])
    d = run(snap, body=chat(response_format=SCHEMA))
    assert isinstance(d, Route) and d.backend.name == "b"
    assert [(r.agent_id, r.reconciler, r.suggested_action) for r in d.reasons] == [
        ("a", "RequestAnalyzer", "ask for json_object instead, or use a backend whose model supports json_schema")]
    assert isinstance(run(snap, body=chat(response_format={"type": "json_object"})), Route)
