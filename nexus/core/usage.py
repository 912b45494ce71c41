"""Token usage reported by backends, checked before it is billed.

A count is a non-negative integer no larger than `MAX_TOKENS` (bools, floats, strings and negatives are
not counts). A usage object with a field that is not a count is invalid as a whole: the gateway bills its
estimate instead, and the caller records a metric and a log line naming the backend and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_TOKENS", "Usage", "count", "openai_usage"]

MAX_TOKENS = 100_000_000  # far above any context window; a larger "count" is garbage


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


def count(value: Any) -> int | None:
    """`value` as a token count, or None when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS:
        return value
    return None


def openai_usage(usage: Any) -> tuple[Usage | None, str | None]:
    """(usage, problem) of an OpenAI `usage` value: (None, None) when absent or null, (None, why) when
    invalid, (Usage, None) when every count present is valid (a missing count is 0)."""
    if usage is None:
        return None, None
    if not isinstance(usage, Mapping):
        return None, f"usage is {type(usage).__name__}, not an object"
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        raw = usage.get(key)
        value = 0 if raw is None else count(raw)
        if value is None:
            return None, f"usage.{key} is {str(raw)[:40]!r}, not a token count"
        counts.append(value)
    return Usage(*counts), None
