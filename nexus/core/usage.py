"""Token usage reported by backends, checked before it is billed.

A count is a non-negative integer no larger than `MAX_TOKENS` (bools, floats, strings and negatives are
not counts). A usage object with a field that is not a count is invalid as a whole: the gateway bills its
estimate instead, and the caller records a metric and a log line naming the backend and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_TOKENS", "RESPONSES_USAGE_KEYS", "Usage", "count", "openai_usage"]

RESPONSES_USAGE_KEYS = ("input_tokens", "output_tokens")  # the Responses API's names of the two counts
MAX_TOKENS = 100_000_000  # far above any context window; a larger "count" is garbage


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage in OpenAI terms, the one shape every adapter reports. `cached_tokens` (prompt tokens read
    from a provider's cache) is part of `prompt_tokens`, never added to it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI `usage` object (with `prompt_tokens_details` only when some prompt was cached)."""
        out: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                               "total_tokens": self.total_tokens}
        return {**out, "prompt_tokens_details": {"cached_tokens": self.cached_tokens}} if self.cached_tokens else out


def count(value: Any) -> int | None:
    """`value` as a token count, or None when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def openai_usage(usage: Any, keys: tuple[str, str] = ("prompt_tokens", "completion_tokens"),
                 ) -> tuple[Usage | None, str | None]:
    """(usage, problem) of an OpenAI `usage` value: (None, None) when absent or null, (None, why) when
    invalid, (Usage, None) when every count present is valid (a missing count is 0). `keys` name the
    prompt and completion counts (the Responses API says `input_tokens` / `output_tokens`)."""
    if usage is None:
        return None, None
    if not isinstance(usage, Mapping):
        return None, f"usage is {type(usage).__name__}, not an object"
    counts = []
    for key in keys:
        raw = usage.get(key)
        value = 0 if raw is None else count(raw)
        if value is None:
            return None, f"usage.{key} is {str(raw)[:40]!r}, not a token count"
        counts.append(value)
    return Usage(*counts), None
