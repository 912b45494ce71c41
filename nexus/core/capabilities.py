"""Request features as routing requirements, and what each backend type's adapter can carry.

A request feature (images, tools, a JSON response format, a JSON schema, several choices `n > 1`, log
probabilities, the legacy text completions endpoint) is a requirement: the analyzer excludes a backend whose
model cannot serve it, with a reason, and never serves the request with the feature silently dropped
(docs/protocols.md).

What a model supports is what its config or discovery declares (`[[backends.models]]` flags: all true but
`vision`) AND what its backend type's adapter can carry (the type's `lacks`, nexus/core/adapters/registry.py).
The Anthropic adapter has no `n`, no log probabilities and no text completions (Ollama's has no `n`); JSON
mode and JSON schemas it emulates faithfully through a forced tool, so those stay supported. Streams are
served by every adapter.

Invariants: pure; `features(req)` and `unsupported(type, spec)` are the only places that map requirement
fields and spec flags to features; the rejection texts live in `_REASONS`, once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nexus.core.model import ModelSpec
    from nexus.core.pipeline.intent import Requirements

__all__ = ["Feature", "features", "rejection", "unsupported"]


class Feature(StrEnum):
    VISION = "vision"
    TOOLS = "tools"
    JSON_MODE = "json_mode"  # response_format json_object or json_schema
    JSON_SCHEMA = "json_schema"  # response_format json_schema (a schema to follow, not only JSON)
    MULTIPLE_CHOICES = "n"  # n > 1
    LOGPROBS = "logprobs"
    COMPLETIONS = "completions"  # the legacy POST /v1/completions endpoint


# In check order: the first feature a model lacks is the rejection reason.
_ORDER = (Feature.VISION, Feature.TOOLS, Feature.JSON_MODE, Feature.JSON_SCHEMA, Feature.MULTIPLE_CHOICES,
          Feature.LOGPROBS, Feature.COMPLETIONS)

_REASONS: dict[Feature, tuple[str, str]] = {
    Feature.VISION: ("model {model} on this backend does not accept images",
                     "send the request without image parts, or declare vision = true for {model} on a backend "
                     "that supports it"),
    Feature.TOOLS: ("model {model} on this backend does not support tools",
                    "send the request without tools, or use a backend whose model supports tools"),
    Feature.JSON_MODE: ("model {model} on this backend does not support JSON mode",
                        "drop response_format, or use a backend whose model supports json_mode"),
    Feature.JSON_SCHEMA: ("model {model} on this backend does not support a json_schema response_format",
                          "ask for json_object instead, or use a backend whose model supports json_schema"),
    Feature.MULTIPLE_CHOICES: ("model {model} on this backend cannot return several choices (n > 1)",
                               "send n = 1 and repeat the request, or use a backend that supports n"),
    Feature.LOGPROBS: ("model {model} on this backend does not return log probabilities",
                       "drop logprobs / top_logprobs, or use a backend whose model supports logprobs"),
    Feature.COMPLETIONS: ("model {model} on this backend does not serve text completions (/v1/completions)",
                          "use /v1/chat/completions, or a backend that serves completions (vLLM, llama.cpp)"),
}


def features(req: Requirements) -> frozenset[Feature]:
    """The features a request needs."""
    out = set()
    if req.vision:
        out.add(Feature.VISION)
    if req.tools:
        out.add(Feature.TOOLS)
    if req.json_mode:
        out.add(Feature.JSON_MODE)
    if req.json_schema:
        out.add(Feature.JSON_SCHEMA)
    if req.choices > 1:
        out.add(Feature.MULTIPLE_CHOICES)
    if req.logprobs:
        out.add(Feature.LOGPROBS)
    if req.completions:
        out.add(Feature.COMPLETIONS)
    return frozenset(out)


def unsupported(spec: ModelSpec, limits: frozenset[Feature] = frozenset()) -> frozenset[Feature]:
    """The features this model cannot serve: its flags that are false, plus `limits` (its backend type's)."""
    flags = {Feature.VISION: spec.vision, Feature.TOOLS: spec.tools, Feature.JSON_MODE: spec.json_mode,
             Feature.JSON_SCHEMA: spec.json_schema, Feature.MULTIPLE_CHOICES: spec.multiple_choices,
             Feature.LOGPROBS: spec.logprobs, Feature.COMPLETIONS: spec.completions}
    return frozenset(f for f, ok in flags.items() if not ok) | limits


def rejection(missing: frozenset[Feature], model: str) -> tuple[str, str] | None:
    """(reason, suggested action) for the first missing feature, or None when nothing is missing."""
    for f in _ORDER:
        if f in missing:
            reason, action = _REASONS[f]
            return reason.format(model=model), action.format(model=model)
    return None
