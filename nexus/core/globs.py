"""Model-pattern globs for traffic policies: validation, compilation, linear-time matching, specificity.

Syntax is shell-style: `*` any run, `?` one character, `[abc]` / `[a-z]` / `[!abc]` a class (a leading
`]` and a leading or trailing `-` are literal inside a class). Everything else is literal, `\\` included.
Specificity is the number of literal characters; when several policies match a model, the most specific
wins and ties go to the one declared first (`best_match`).

Invariants:
- `validate_glob` is the one validator: the TOML, the admin API and the snapshot builder all go through
  it (`compile_glob` calls it), so a pattern is accepted or refused identically wherever it enters. It
  refuses empty patterns, unbalanced brackets, empty classes, reversed ranges (`[z-a]`) and patterns
  over `MAX_GLOB_LENGTH` characters or `MAX_GLOB_WILDCARDS` wildcards.
- Matching never backtracks. A pattern is split at its stars into fixed-length segments; the first must
  match at the start, the last at the end, and each middle one is found at its leftmost place after the
  previous one (leftmost is always safe for a star-separated segment). Each segment is a literal string
  (str methods) or a star-free regex of fixed length, so one match costs O(len(name) x len(pattern)),
  whatever the pattern. Client model names are also bounded (`MAX_MODEL_NAME_LENGTH`).
- Patterns are compiled once per snapshot, never per request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "MAX_GLOB_LENGTH",
    "MAX_GLOB_WILDCARDS",
    "MAX_MODEL_NAME_LENGTH",
    "Glob",
    "GlobError",
    "best_match",
    "compile_glob",
    "validate_glob",
]

MAX_GLOB_LENGTH = 256
MAX_GLOB_WILDCARDS = 32  # `*`, `?` and `[...]` together
MAX_MODEL_NAME_LENGTH = 256  # the longest model name a client may send (400 naming `model` past it)


class GlobError(ValueError):
    """A pattern that cannot be compiled; the message says how to fix it."""


def _short(pattern: str) -> str:
    return repr(pattern if len(pattern) <= 40 else pattern[:37] + "...")


def _class(pattern: str, start: int) -> tuple[str, int]:
    """The regex of the class opening at `start`, and the index of its closing `]`."""
    n = len(pattern)
    j = start + 1
    negate = j < n and pattern[j] == "!"
    if negate:
        j += 1
    first = j
    if j < n and pattern[j] == "]":
        j += 1  # a leading ] is literal inside the class
    while j < n and pattern[j] != "]":
        j += 1
    if j >= n:
        raise GlobError(f"unclosed '[' at position {start} in pattern {_short(pattern)}; close it with ']'")
    body = pattern[first:j]
    if not body:
        raise GlobError(f"empty character class at position {start} in pattern {_short(pattern)}")
    items: list[str] = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = body[k], body[k + 2]
            if lo > hi:
                raise GlobError(
                    f"bad range '{lo}-{hi}' in the class at position {start} of pattern {_short(pattern)}; "
                    f"write ranges low to high ('{hi}-{lo}')"
                )
            items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            k += 3
        else:
            items.append(re.escape(body[k]))
            k += 1
    return f"[{'^' if negate else ''}{''.join(items)}]", j


@dataclass(frozen=True, slots=True)
class _Segment:
    """A star-free run of single-character tokens: a literal string, or a fixed-length regex."""

    length: int
    literal: str | None
    regex: re.Pattern[str] | None

    def at(self, name: str, pos: int) -> bool:
        if self.literal is not None:
            return name.startswith(self.literal, pos)
        assert self.regex is not None
        return self.regex.match(name, pos) is not None

    def find(self, name: str, start: int, end: int) -> int:
        """Leftmost index >= start where the segment fits entirely before `end`, or -1."""
        if self.literal is not None:
            return name.find(self.literal, start, end)
        assert self.regex is not None
        m = self.regex.search(name, start, end)
        return -1 if m is None else m.start()


def _segment(tokens: list[tuple[bool, str]]) -> _Segment:
    """`tokens`: (is_literal, text) with text a literal character or a one-character regex."""
    if all(lit for lit, _ in tokens):
        return _Segment(len(tokens), "".join(t for _, t in tokens), None)
    source = "".join(re.escape(t) if lit else t for lit, t in tokens)
    return _Segment(len(tokens), None, re.compile(source, re.DOTALL))


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled pattern; `match(name)` says whether the whole name matches."""

    pattern: str
    literals: int
    segments: tuple[_Segment, ...]  # one segment when the pattern has no star, else stars + 1
    starred: bool

    def match(self, name: str) -> bool:
        segs = self.segments
        head = segs[0]
        if not self.starred:
            return len(name) == head.length and head.at(name, 0)
        tail = segs[-1]
        end = len(name) - tail.length
        if end < head.length or not head.at(name, 0) or not tail.at(name, end):
            return False
        pos = head.length
        for seg in segs[1:-1]:
            found = seg.find(name, pos, end)
            if found < 0:
                return False
            pos = found + seg.length
        return True


def _parse(pattern: object) -> Glob:
    if not isinstance(pattern, str) or not pattern.strip():
        raise GlobError("model_pattern is empty; give a model name or a glob such as 'gpt-4*'")
    if pattern != pattern.strip():
        raise GlobError(f"model_pattern {_short(pattern)} has leading or trailing spaces; remove them")
    if len(pattern) > MAX_GLOB_LENGTH:
        raise GlobError(
            f"pattern {_short(pattern)} is {len(pattern)} characters long; the limit is {MAX_GLOB_LENGTH}"
        )
    segments: list[_Segment] = []
    current: list[tuple[bool, str]] = []
    literals = wildcards = 0
    starred = False
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            wildcards += 1
            starred = True
            segments.append(_segment(current))
            current = []
            while i + 1 < n and pattern[i + 1] == "*":  # a run of stars is one star
                i += 1
        elif ch == "?":
            wildcards += 1
            current.append((False, "."))
        elif ch == "[":
            wildcards += 1
            regex, i = _class(pattern, i)
            current.append((False, regex))
        elif ch == "]":
            raise GlobError(
                f"unmatched ']' at position {i} in pattern {_short(pattern)}; remove it or open with '['"
            )
        else:
            literals += 1
            current.append((True, ch))
        i += 1
    if wildcards > MAX_GLOB_WILDCARDS:
        raise GlobError(
            f"pattern {_short(pattern)} has {wildcards} wildcards ('*', '?', '[...]'); the limit is "
            f"{MAX_GLOB_WILDCARDS}"
        )
    segments.append(_segment(current))
    return Glob(pattern, literals, tuple(segments), starred)


def validate_glob(pattern: str) -> str:
    """`pattern` itself when it is a valid glob, else GlobError saying what to fix."""
    _parse(pattern)
    return pattern


def compile_glob(pattern: str) -> Glob:
    return _parse(pattern)


T = TypeVar("T")


def best_match(model: str, compiled: Iterable[tuple[Glob, int, T]]) -> T | None:
    """The most specific match among (glob, literal count, item), in declaration order."""
    best: T | None = None
    best_score = -1
    for glob, score, item in compiled:
        if score > best_score and glob.match(model):
            best, best_score = item, score
    return best
