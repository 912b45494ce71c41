"""What each backend type is: its wire protocol's adapter and its facts, in one table.

`BackendType` (nexus/core/model.py) is the list of names the configuration accepts; `REGISTRY` maps every
one of them to a `BackendKind`, and everything per type is read from here: the gateway and the health
worker take the adapter (`adapter_for`), the configuration asks whether a key is required (`needs_key`),
the snapshot whether the type is local (costs nothing; restricted zone by default: `zone_for`), and
nexus/core/prices.py gathers the default prices the types declare.

Adding a backend type: one `BackendType` member and one entry here, plus an adapter module when it speaks
a wire protocol none of nexus/core/adapters/ speaks yet.

Invariants:
- Every `BackendType` has exactly one entry (tests/core/adapters/test_registry.py).
- A string that names no type (an older Redis value, say) is treated as `generic`: an open, cloud-priced
  OpenAI-compatible backend, never a restricted one.
- A type's default zone follows from `local` alone: local server types are restricted, the rest open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from nexus.core.adapters.anthropic import ANTHROPIC
from nexus.core.adapters.base import BackendAdapter
from nexus.core.adapters.google import GOOGLE
from nexus.core.adapters.ollama import OLLAMA
from nexus.core.adapters.openai import OPENAI
from nexus.core.capabilities import Feature
from nexus.core.model import BackendType, Zone, parse_zone

__all__ = ["LOCAL_TYPES", "REGISTRY", "BackendKind", "adapter_for", "is_local_type", "kind_of", "zone_for"]

Prices = Mapping[str, tuple[float, float]]  # model name or family prefix -> USD per 1M tokens (input, output)


@dataclass(frozen=True, slots=True)
class BackendKind:
    """The facts of one backend type."""

    adapter: BackendAdapter
    local: bool = False  # a server on the operator's own hardware: costs nothing, restricted zone by default
    needs_key: bool = False  # a backend of this type must name a secret
    prices: Prices = field(default_factory=dict)  # default prices of the models this type's vendor sells
    # request features its adapter cannot carry, whatever a model's config says (nexus/core/capabilities.py)
    lacks: frozenset[Feature] = frozenset()

    @property
    def default_zone(self) -> Zone:
        return Zone.RESTRICTED if self.local else Zone.OPEN


_OPENAI_PRICES: Prices = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
}
_ANTHROPIC_PRICES: Prices = {
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
}
_GOOGLE_PRICES: Prices = {
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-1.5-flash": (0.075, 0.30),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
}

REGISTRY: Mapping[BackendType, BackendKind] = MappingProxyType({
    # its OpenAI-compatible API takes no `n` (one choice whatever is asked; docs.ollama.com openai-compatibility)
    BackendType.OLLAMA: BackendKind(OLLAMA, local=True, lacks=frozenset({Feature.MULTIPLE_CHOICES})),
    BackendType.VLLM: BackendKind(OPENAI, local=True),
    BackendType.LLAMACPP: BackendKind(OPENAI, local=True),
    BackendType.LMSTUDIO: BackendKind(OPENAI, local=True),
    BackendType.EXO: BackendKind(OPENAI, local=True),  # an exo cluster: OpenAI-compatible API
    BackendType.OPENAI: BackendKind(OPENAI, needs_key=True, prices=_OPENAI_PRICES),
    # no n > 1, logprobs or text completions in the Messages API (JSON modes are emulated: docs/protocols.md)
    BackendType.ANTHROPIC: BackendKind(
        ANTHROPIC, needs_key=True, prices=_ANTHROPIC_PRICES,
        lacks=frozenset({Feature.MULTIPLE_CHOICES, Feature.LOGPROBS, Feature.COMPLETIONS})),
    # its OpenAI-compatible API (chat and embeddings; no text completions)
    BackendType.GOOGLE: BackendKind(GOOGLE, needs_key=True, prices=_GOOGLE_PRICES,
                                    lacks=frozenset({Feature.COMPLETIONS})),
    BackendType.GENERIC: BackendKind(OPENAI),
})

LOCAL_TYPES = frozenset(t for t, kind in REGISTRY.items() if kind.local)


def kind_of(backend_type: str) -> BackendKind:
    """The facts of `backend_type`; an unknown name is `generic`'s."""
    kind = REGISTRY.get(backend_type)  # a plain str finds the StrEnum key equal to it
    return kind if kind is not None else REGISTRY[BackendType.GENERIC]


def adapter_for(backend_type: str) -> BackendAdapter:
    return kind_of(backend_type).adapter


def is_local_type(backend_type: str) -> bool:
    return backend_type in LOCAL_TYPES


def zone_for(backend_type: str, explicit: str | None) -> Zone:
    """A backend's zone, derived here only: an explicit zone wins, else its type's default."""
    zone = parse_zone(explicit)
    return zone if zone is not None else kind_of(backend_type).default_zone
