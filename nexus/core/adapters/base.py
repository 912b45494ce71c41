"""The backend adapter interface: what the gateway and the health worker ask of a wire protocol.

Nexus speaks the OpenAI API to its clients. A `BackendAdapter` is one backend wire protocol seen from
there: how a client's request is encoded for the backend (`encode`), which headers carry the key
(`auth_headers`), how a whole answer (`answer`), an error answer (`error_body`) and a stream (`stream`)
come back in OpenAI terms, where a health probe goes (`probe`) and how the backend's model list reads
(`list_models`). Only frozen values cross the interface (`Call`, `Answer`, `ProbeRequest`, `ListedModel`)
plus one stateful object per stream (`StreamTranslator`).

Invariants:
- Pure: no I/O, no clock, no randomness, no configuration. The caller (nexus/router_node/upstream.py,
  nexus/worker/probe.py) does the HTTP, reads the key and the clock, and passes them in.
- Errors (this tree, raised by adapters only):

      AdapterError(ValueError)
      +-- TranslationError  the client's request cannot be expressed for this protocol: a 400 naming `param`
      +-- InvalidAnswer     the backend's 200 is not the API's object: an upstream failure (fail over)

- A base URL that already ends in a version segment (`/v1`, Gemini's `/v1beta/openai`) keeps it instead of
  gaining a second one (`endpoint_url`): the gateway and the probes follow the same rule.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson

from nexus.core.usage import Usage

__all__ = [
    "CONTEXT_FIELDS",
    "AdapterError",
    "Answer",
    "BackendAdapter",
    "Call",
    "InvalidAnswer",
    "ListedModel",
    "ProbeRequest",
    "StreamTranslator",
    "TranslationError",
    "endpoint_url",
    "list_entries",
    "listed_model",
]

# where model lists report a context length: the fake backend, vLLM, LM Studio, and some proxies
CONTEXT_FIELDS = ("context_length", "max_model_len", "max_context_length", "context_window")


class AdapterError(ValueError):
    """A request or an answer that the wire protocol cannot carry."""


class TranslationError(AdapterError):
    """The OpenAI request cannot be expressed for the backend: answer 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def envelope(self) -> bytes:
        """The OpenAI error envelope the client receives."""
        err = {"message": str(self), "type": "invalid_request_error", "param": self.param, "code": None}
        return orjson.dumps({"error": err})


class InvalidAnswer(AdapterError):
    """The backend answered 200 with something that is not the API's object (the message says what)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a backend, encoded: POST `body` to `path` (OpenAI-style, under `endpoint_url`'s rule)."""

    path: str
    body: bytes
    json_answer: bool = False  # JSON mode is emulated (Anthropic's forced tool): `answer`/`stream` read it so


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole 200 answer as the client will see it, with what the gateway bills from it."""

    body: bytes
    usage: Usage | None = None
    usage_problem: str | None = None  # the backend sent usage that is not valid counts (billed on the estimate)
    completion_chars: int = 0  # text length of the answer, for the estimate when usage is missing


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """A health probe: GET `url` with `headers`."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold a key: not in repr


@dataclass(frozen=True, slots=True)
class ListedModel:
    """One entry of a backend's model list, as reported; None is "not reported". The worker bounds and
    validates these into configured models (nexus/worker/health.py `parse_models`)."""

    name: str
    context_length: int | None = None
    vision: bool | None = None
    tools: bool | None = None


class StreamTranslator(Protocol):
    """One backend stream turned into OpenAI `chat.completion.chunk` SSE, fed bytes as they arrive.

    `feed` returns what the client may see now, `flush` what is left when the backend's body ended. Once
    `done` (the end marker, or an error event) further input is ignored. `error` is the OpenAI error object
    the stream ended with; `usage`, `usage_problem` and `completion_chars` are for billing."""

    @property
    def done(self) -> bool: ...
    @property
    def error(self) -> dict[str, Any] | None: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def usage_problem(self) -> str | None: ...
    @property
    def completion_chars(self) -> int: ...
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def endpoint_url(base: str, path: str) -> str:
    """`path` is OpenAI-style (`/v1/chat/completions`); a base URL that already ends in a version segment
    keeps it instead of gaining a second one."""
    if base.endswith(("/v1", "/openai")):
        return base + path.removeprefix("/v1")
    return base + path


def listed_model(entry: Mapping[str, Any], name: Any) -> ListedModel | None:
    """A model-list entry named `name`: its context length and capabilities where reported, or None when
    the name is unusable. Shared by the protocols: the fields mean the same wherever they appear."""
    if not isinstance(name, str) or not name:
        return None
    context = next(
        (v for f in CONTEXT_FIELDS if isinstance(v := entry.get(f), int) and not isinstance(v, bool) and v > 0),
        None,
    )
    caps = entry.get("capabilities")
    if isinstance(caps, list) and all(isinstance(c, str) for c in caps):
        return ListedModel(name, context, vision="vision" in caps, tools="tools" in caps)
    if entry.get("type") == "vlm":  # LM Studio's native model list
        return ListedModel(name, context, vision=True)
    return ListedModel(name, context)


def list_entries(payload: Any, list_key: str, name_key: str) -> Iterator[ListedModel]:
    """The usable entries of `payload[list_key]`, each named by its `name_key`; anything else is skipped."""
    entries = payload.get(list_key) if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and (m := listed_model(entry, entry.get(name_key))) is not None:
            yield m


class BackendAdapter(ABC):
    """One wire protocol. Stateless: one instance serves every backend of the types that speak it."""

    name: ClassVar[str]
    # this protocol streams usage only when asked (`stream_options.include_usage`), so the gateway asks
    asks_stream_usage: ClassVar[bool] = False
    probe_path: ClassVar[str] = "/v1/models"

    @abstractmethod
    def auth_headers(self, key: str | None) -> dict[str, str]:
        """The headers of every request to the backend (the key's, when there is one)."""

    @abstractmethod
    def encode(self, body: dict[str, Any], raw: bytes, *, path: str, model: str, stream: bool,
               ask_usage: bool) -> Call:
        """The client's request (`body`, parsed from `raw`) for backend model `model`; TranslationError
        when it cannot be expressed."""

    @abstractmethod
    def answer(self, payload: bytes, *, model: str, created: int, embeddings: bool,
               json_answer: bool = False) -> Answer:
        """A 200 body as the client's answer; InvalidAnswer when it is not the API's object. `json_answer`
        is the encoded `Call`'s: the request's JSON mode is emulated and the answer carries it."""

    @abstractmethod
    def error_body(self, status: int, payload: bytes, backend: str) -> bytes:
        """A non-retryable error answer (400, 404, 422...) as the OpenAI error envelope."""

    @abstractmethod
    def stream(self, *, model: str, created: int, asked_usage: bool, client_wants_usage: bool,
               json_answer: bool = False) -> StreamTranslator:
        """The translator of one stream; `asked_usage`: the gateway asked for usage the client did not."""

    def refuses_usage_option(self, payload: bytes) -> bool:
        """A 400 `payload` says the backend refuses the usage option the gateway added (retry without it)."""
        return False

    def api_base(self, base_url: str) -> str:
        """The base the API paths go under, from the configured URL (the same, unless a vendor says else)."""
        return base_url

    def probe(self, base_url: str, key: str | None) -> ProbeRequest:
        """One cheap authenticated GET that lists the backend's models."""
        return ProbeRequest(endpoint_url(self.api_base(base_url), self.probe_path),
                            {"Accept": "application/json", **self.auth_headers(key)})

    def list_models(self, payload: Any) -> Iterator[ListedModel]:
        """The models of a parsed probe reply, in order; an OpenAI-style `{"data": [{"id": ...}]}` list."""
        return list_entries(payload, "data", "id")
