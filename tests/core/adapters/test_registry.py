"""The backend type registry: every type has an adapter and its facts, and each adapter's wire rules (auth
headers, probe target, model-list shape, request path) per type, as matrices over every `BackendType`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from nexus.core.adapters import (
    LOCAL_TYPES,
    REGISTRY,
    ListedModel,
    TranslationError,
    adapter_for,
    endpoint_url,
    is_local_type,
    kind_of,
    zone_for,
)
from nexus.core.config import BackendConfig
from nexus.core.model import BackendType, Zone
from nexus.core.prices import DEFAULT_PRICES, default_price

T = BackendType
ALL = [pytest.param(t, id=t.value) for t in BackendType]
BEARER = {"Authorization": "Bearer sk-1"}
ANTHROPIC = {"anthropic-version": "2023-06-01", "x-api-key": "sk-1"}
# (type, wire protocol, local, needs a key): the facts of today's types
FACTS = [
    (T.OLLAMA, "ollama", True, False),
    (T.VLLM, "openai", True, False),
    (T.LLAMACPP, "openai", True, False),
    (T.LMSTUDIO, "openai", True, False),
    (T.EXO, "openai", True, False),  # an exo cluster (Rust Nexus type names)
    (T.OPENAI, "openai", False, True),
    (T.ANTHROPIC, "anthropic", False, True),
    (T.GOOGLE, "google", False, True),  # the OpenAI protocol under Gemini's derived base
    (T.GENERIC, "openai", False, False),
]


def test_every_backend_type_has_exactly_one_entry() -> None:
    assert list(REGISTRY) == list(BackendType)
    assert {f[0] for f in FACTS} == set(BackendType), "a new type needs its row in FACTS"
    assert {p.values[0] for p in PROBES} == set(BackendType), "a new type needs its row in PROBES"


@pytest.mark.parametrize(("type_", "wire", "local", "needs_key"), [pytest.param(*f, id=f[0].value) for f in FACTS])
def test_facts_per_type(type_: BackendType, wire: str, local: bool, needs_key: bool) -> None:
    kind = kind_of(type_)
    assert (kind.adapter.name, kind.local, kind.needs_key) == (wire, local, needs_key)
    assert is_local_type(type_) is local and (type_ in LOCAL_TYPES) is local
    assert zone_for(type_, None) is (Zone.RESTRICTED if local else Zone.OPEN)
    assert zone_for(type_, "OPEN") is Zone.OPEN and zone_for(type_, "restricted") is Zone.RESTRICTED


def test_an_unknown_type_name_is_generic() -> None:
    assert kind_of("made-up") is REGISTRY[T.GENERIC]
    assert kind_of("vllm") is REGISTRY[T.VLLM]  # a plain string finds its type
    assert zone_for("made-up", None) is Zone.OPEN and not is_local_type("made-up")


@pytest.mark.parametrize("type_", ALL)
def test_the_config_requires_a_secret_exactly_where_the_registry_says(type_: BackendType) -> None:
    spec = {"name": "b", "url": "http://h:1", "type": type_.value}
    if kind_of(type_).needs_key:
        with pytest.raises(ValidationError, match=f"secret is required for type '{type_.value}'"):
            BackendConfig.model_validate(spec)
    else:
        assert BackendConfig.model_validate(spec).secret is None
    assert BackendConfig.model_validate({**spec, "secret": "k"}).secret == "k"


def test_default_prices_are_what_the_types_declare() -> None:
    declared = {m: p for kind in REGISTRY.values() for m, p in kind.prices.items()}
    assert declared == DEFAULT_PRICES and len(declared) == sum(len(k.prices) for k in REGISTRY.values())
    assert not any(kind_of(t).prices for t in LOCAL_TYPES)
    assert default_price("gpt-4o-2024-08-06") == (2.50, 10.00)  # a dated variant finds its family
    assert default_price("claude-3-5-haiku-latest") == (0.80, 4.00)
    assert default_price("gemini-2.5-flash-lite") == (0.30, 2.50)


@pytest.mark.parametrize(
    ("type_", "key", "headers"),
    [
        *[pytest.param(t, "sk-1", BEARER, id=f"{t.value}-bearer") for t in BackendType if t is not T.ANTHROPIC],
        *[pytest.param(t, None, {}, id=f"{t.value}-no-key") for t in BackendType if t is not T.ANTHROPIC],
        pytest.param(T.ANTHROPIC, "sk-1", ANTHROPIC, id="anthropic-x-api-key"),
        pytest.param(T.ANTHROPIC, None, {"anthropic-version": "2023-06-01"}, id="anthropic-no-key-keeps-version"),
    ],
)
def test_auth_headers_per_type(type_: BackendType, key: str | None, headers: dict[str, str]) -> None:
    assert adapter_for(type_).auth_headers(key) == headers


PROBES = [
    pytest.param(T.OLLAMA, "http://h:11434", "http://h:11434/api/tags", {}, id="ollama-native-tags-no-key"),
    pytest.param(T.VLLM, "http://h:8000", "http://h:8000/v1/models", BEARER, id="vllm"),
    pytest.param(T.LLAMACPP, "http://h:8080/v1", "http://h:8080/v1/models", BEARER, id="llamacpp-base-with-v1"),
    pytest.param(T.LMSTUDIO, "http://h:1234", "http://h:1234/v1/models", BEARER, id="lmstudio"),
    pytest.param(T.EXO, "http://h:52415", "http://h:52415/v1/models", BEARER, id="exo"),
    pytest.param(T.OPENAI, "https://api.openai.com/v1", "https://api.openai.com/v1/models", BEARER, id="openai"),
    pytest.param(T.ANTHROPIC, "https://api.anthropic.com", "https://api.anthropic.com/v1/models", ANTHROPIC,
                 id="anthropic"),
    pytest.param(T.GOOGLE, "https://g/v1beta/openai", "https://g/v1beta/openai/models", BEARER,
                 id="google-openai-compatible-base"),
    pytest.param(T.GOOGLE, "https://g", "https://g/v1beta/openai/models", BEARER, id="google-host-only"),
    pytest.param(T.GENERIC, "http://proxy/llm", "http://proxy/llm/v1/models", BEARER, id="generic-under-a-path"),
]


@pytest.mark.parametrize(("type_", "base", "url", "headers"), PROBES)
def test_probe_target_per_type(type_: BackendType, base: str, url: str, headers: dict[str, str]) -> None:
    probe = adapter_for(type_).probe(base, "sk-1")
    assert probe.url == url
    assert dict(probe.headers) == {"Accept": "application/json", **headers}
    assert "sk-1" not in repr(probe)


OPENAI_LIST = {"object": "list", "data": [{"id": "m1", "context_length": 8192}, {"id": "m2", "type": "vlm"}]}
OLLAMA_TAGS = {"models": [{"name": "llama3:8b", "model": "llama3:8b", "details": {}}]}
OPENAI_MODELS = [ListedModel("m1", 8192), ListedModel("m2", vision=True)]


@pytest.mark.parametrize(
    ("type_", "payload", "expected"),
    [
        *[pytest.param(t, OPENAI_LIST, OPENAI_MODELS, id=f"{t.value}-reads-data") for t in BackendType
          if t is not T.OLLAMA],
        *[pytest.param(t, OLLAMA_TAGS, [], id=f"{t.value}-ignores-models") for t in BackendType if t is not T.OLLAMA],
        pytest.param(T.OLLAMA, OLLAMA_TAGS, [ListedModel("llama3:8b")], id="ollama-reads-models"),
        pytest.param(T.OLLAMA, OPENAI_LIST, [], id="ollama-ignores-data"),
        pytest.param(T.ANTHROPIC, {"data": [{"id": "claude-x", "type": "model", "display_name": "X"}]},
                     [ListedModel("claude-x")], id="anthropic-model-objects"),
        pytest.param(T.VLLM, {"data": [{"id": "v", "capabilities": ["completion", "vision"]}]},
                     [ListedModel("v", vision=True, tools=False)], id="reported-capabilities"),
        pytest.param(T.VLLM, {"data": [{"id": "x", "max_model_len": True, "context_window": 7}]},
                     [ListedModel("x", 7)], id="the-first-valid-context-field"),
        pytest.param(T.GENERIC, [{"id": "m"}], [], id="not-an-object"),
    ],
)
def test_model_list_per_type(type_: BackendType, payload: Any, expected: list[ListedModel]) -> None:
    assert list(adapter_for(type_).list_models(payload)) == expected


CHAT = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("type_", "path", "sent_to"),
    [
        *[pytest.param(t, "/v1/chat/completions", "/v1/chat/completions", id=f"{t.value}-chat")
          for t in BackendType if t is not T.ANTHROPIC],
        pytest.param(T.GENERIC, "/v1/embeddings", "/v1/embeddings", id="generic-embeddings"),
        pytest.param(T.ANTHROPIC, "/v1/chat/completions", "/v1/messages", id="anthropic-messages"),
    ],
)
def test_request_path_and_model_per_type(type_: BackendType, path: str, sent_to: str) -> None:
    raw = orjson.dumps(CHAT)
    call = adapter_for(type_).encode(dict(CHAT), raw, path=path, model="real", stream=False, ask_usage=False)
    assert call.path == sent_to and orjson.loads(call.body)["model"] == "real"
    same = adapter_for(type_).encode({**CHAT, "model": "real"}, raw, path=path, model="real", stream=False,
                                     ask_usage=False)
    assert (same.body is raw) is (type_ is not T.ANTHROPIC)  # OpenAI-compatible: the client's own bytes


def test_only_the_openai_protocol_asks_for_stream_usage() -> None:
    openai, anthropic = adapter_for(T.VLLM), adapter_for(T.ANTHROPIC)
    call = openai.encode(dict(CHAT), b"", path="/v1/chat/completions", model="m", stream=True, ask_usage=True)
    assert orjson.loads(call.body)["stream_options"] == {"include_usage": True}
    assert openai.asks_stream_usage and not anthropic.asks_stream_usage
    assert openai.refuses_usage_option(b'{"error": "unknown field stream_options"}')
    assert not openai.refuses_usage_option(b'{"error": "bad temperature"}')
    assert not anthropic.refuses_usage_option(b"stream_options")


def test_an_inexpressible_request_is_the_clients_400_naming_the_field() -> None:
    with pytest.raises(TranslationError) as caught:
        adapter_for(T.ANTHROPIC).encode({"messages": "x"}, b"", path="/v1/chat/completions", model="m",
                                        stream=False, ask_usage=False)
    assert orjson.loads(caught.value.envelope()) == {"error": {
        "message": "'messages' must be a list", "type": "invalid_request_error", "param": "messages", "code": None}}


@pytest.mark.parametrize(
    ("base", "url"),
    [
        pytest.param("http://h", "http://h/v1/chat/completions", id="bare-host"),
        pytest.param("http://h/v1", "http://h/v1/chat/completions", id="base-with-v1"),
        pytest.param("https://g/v1beta/openai", "https://g/v1beta/openai/chat/completions", id="gemini-openai"),
    ],
)
def test_endpoint_url_keeps_one_version_segment(base: str, url: str) -> None:
    assert endpoint_url(base, "/v1/chat/completions") == url
