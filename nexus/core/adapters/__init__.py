"""Backend adapters: one module per wire protocol, and the registry of backend types.

- base.py: the interface (`BackendAdapter`) and the frozen values that cross it; the adapter error tree.
- openai.py: the OpenAI-compatible protocol (openai, vllm, llamacpp, lmstudio, google, generic; Ollama's chat).
- anthropic.py (with anthropic_messages.py and anthropic_stream.py): the Anthropic Messages API.
- ollama.py: Ollama's native discovery (`/api/tags`) on top of the OpenAI-compatible protocol.
- sse.py: the server-sent events parser the stream translators share.
- registry.py: every `BackendType` mapped to its adapter and its facts (local, key required, prices).

Everything here is pure (no I/O, no clock, no configuration) and imports nothing outside `nexus.core`.
"""

from nexus.core.adapters.base import (
    AdapterError,
    Answer,
    BackendAdapter,
    Call,
    InvalidAnswer,
    ListedModel,
    ProbeRequest,
    StreamTranslator,
    TranslationError,
    endpoint_url,
)
from nexus.core.adapters.registry import (
    LOCAL_TYPES,
    REGISTRY,
    BackendKind,
    adapter_for,
    is_local_type,
    kind_of,
    zone_for,
)

__all__ = [
    "LOCAL_TYPES",
    "REGISTRY",
    "AdapterError",
    "Answer",
    "BackendAdapter",
    "BackendKind",
    "Call",
    "InvalidAnswer",
    "ListedModel",
    "ProbeRequest",
    "StreamTranslator",
    "TranslationError",
    "adapter_for",
    "endpoint_url",
    "is_local_type",
    "kind_of",
    "zone_for",
]
