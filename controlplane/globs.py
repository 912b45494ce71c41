"""Model-pattern globs for traffic policies: validation, compilation and specificity.

Syntax is shell-style: `*` any run, `?` one character, `[abc]` / `[a-z]` / `[!abc]` a class.
Everything else is literal. Specificity is the number of literal characters; when several policies
match a model, the most specific wins and ties go to the one declared first (`best_policy`).
Patterns are compiled once per snapshot, never per request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeVar

__all__ = ["GlobError", "best_match", "compile_glob", "literal_count", "validate_glob"]


class GlobError(ValueError):
    """A pattern that cannot be compiled; the message says how to fix it."""


def _tokens(pattern: str) -> list[tuple[str, str]]:
    """Split into ("lit", ch) / ("star", "*") / ("any", "?") / ("class", body) tokens."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append(("star", ch))
        elif ch == "?":
            out.append(("any", ch))
        elif ch == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1  # a leading ] is literal inside the class
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                raise GlobError(f"unclosed '[' at position {i} in pattern {pattern!r}; close it with ']'")
            body = pattern[i + 1 : j]
            if body in ("", "!"):
                raise GlobError(f"empty character class at position {i} in pattern {pattern!r}")
            out.append(("class", body))
            i = j
        elif ch == "]":
            raise GlobError(f"unmatched ']' at position {i} in pattern {pattern!r}; remove it or open with '['")
        else:
            out.append(("lit", ch))
        i += 1
    return out


def validate_glob(pattern: str) -> str:
    if not isinstance(pattern, str) or not pattern.strip():
        raise GlobError("model_pattern is empty; give a model name or a glob such as 'gpt-4*'")
    if pattern != pattern.strip():
        raise GlobError(f"model_pattern {pattern!r} has leading or trailing spaces; remove them")
    _tokens(pattern)
    return pattern


def literal_count(pattern: str) -> int:
    return sum(1 for kind, _ in _tokens(pattern) if kind == "lit")


def compile_glob(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    for kind, value in _tokens(pattern):
        if kind == "lit":
            parts.append(re.escape(value))
        elif kind == "star":
            parts.append(".*")
        elif kind == "any":
            parts.append(".")
        else:
            negate = value.startswith("!")
            body = value[1:] if negate else value
            body = body.replace("\\", "\\\\").replace("^", "\\^")
            parts.append(f"[{'^' if negate else ''}{body}]")
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


T = TypeVar("T")


def best_match(model: str, compiled: Iterable[tuple[re.Pattern[str], int, T]]) -> T | None:
    """The most specific match among (regex, literal count, item), in declaration order."""
    best: T | None = None
    best_score = -1
    for regex, score, item in compiled:
        if score > best_score and regex.match(model):
            best, best_score = item, score
    return best
