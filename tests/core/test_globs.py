"""Policy globs: syntax, specificity, validation limits, and matching that never backtracks."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.core.globs import (
    MAX_GLOB_LENGTH,
    MAX_GLOB_WILDCARDS,
    GlobError,
    best_match,
    compile_glob,
    validate_glob,
)


def literal_count(pattern: str) -> int:
    return compile_glob(pattern).literals  # what the snapshot ranks policies by


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        pytest.param("gpt-4o", "gpt-4o", True, id="literal-equal"),
        pytest.param("gpt-4o", "gpt-4o-mini", False, id="literal-longer"),
        pytest.param("gpt-4*", "gpt-4o-mini", True, id="trailing-star"),
        pytest.param("gpt-4*", "gpt-3.5", False, id="trailing-star-miss"),
        pytest.param("*70b", "llama3:70b", True, id="leading-star"),
        pytest.param("*llama*70b*", "meta-llama-3.1-70b-instruct", True, id="stars-around"),
        pytest.param("*llama*70b*", "meta-llama-3.1-8b", False, id="stars-around-miss"),
        pytest.param("*", "", True, id="star-matches-empty"),
        pytest.param("a*a", "a", False, id="head-and-tail-do-not-overlap"),
        pytest.param("a*a", "aa", True, id="head-and-tail-adjacent"),
        pytest.param("ab*ba*ab", "abbab", False, id="middle-overlaps-tail"),
        pytest.param("ab*ba*ab", "abbaab", True, id="middle-fits"),
        pytest.param("m?", "m1", True, id="question-one-char"),
        pytest.param("m?", "m", False, id="question-needs-a-char"),
        pytest.param("m?x", "m\nx", True, id="question-matches-newline"),
        pytest.param("llama[23]*", "llama3:8b", True, id="class"),
        pytest.param("llama[!23]*", "llama3:8b", False, id="negated-class"),
        pytest.param("v[0-9]", "v7", True, id="range"),
        pytest.param("v[a-]", "v-", True, id="trailing-dash-literal"),
        pytest.param("v[]a]", "v]", True, id="leading-bracket-literal"),
        pytest.param("v[!]]", "v]", False, id="negated-leading-bracket"),
        pytest.param("a\\b", "a\\b", True, id="backslash-literal"),
        pytest.param("x[^]", "x^", True, id="caret-literal"),
        pytest.param("x.y", "xzy", False, id="dot-literal"),
        pytest.param("*[0-9]?b*x", "llama-7xb-70bx", True, id="classes-in-middle"),
    ],
)
def test_match(pattern: str, name: str, matches: bool) -> None:
    assert compile_glob(pattern).match(name) is matches


_PIECES = st.sampled_from(["a", "b", "-", "*", "?", "[ab]", "[!a]", "[a-b]", "[]a]", "**"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=8).map("".join), st.text(alphabet="ab-]\n", max_size=12))
def test_agrees_with_fnmatch(pattern: str, name: str) -> None:
    assert compile_glob(pattern).match(name) is fnmatch.fnmatchcase(name, pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("*a" * 15 + "*b", id="15-stars"),
        pytest.param("*" + "?*" * 15 + "b", id="questions-between-stars"),
        pytest.param("*[a]" * 15 + "*b", id="classes-between-stars"),
    ],
)
def test_pathological_patterns_finish(pattern: str) -> None:
    """With backtracking regexes these took hours on this input; the per-test timeout is the bound."""
    glob = compile_glob(pattern)
    for name in ("a" * 200_000, "a" * 199_999 + "c"):
        assert glob.match(name) is False


@pytest.mark.parametrize(
    ("pattern", "fragments"),
    [
        pytest.param("gpt-[4", ["unclosed '['", "close it with ']'"], id="unclosed"),
        pytest.param("gpt-4]", ["unmatched ']'"], id="unmatched"),
        pytest.param("v[!]", ["unclosed '['"], id="negated-only-bracket"),
        pytest.param("[z-a]", ["bad range 'z-a'", "low to high", "'a-z'"], id="reversed-range"),
        pytest.param("m[9-0]*", ["bad range '9-0'"], id="reversed-digit-range"),
        pytest.param("", ["empty"], id="empty"),
        pytest.param(" gpt", ["leading or trailing spaces"], id="spaces"),
        pytest.param("*" * 1000, ["1000 characters", f"the limit is {MAX_GLOB_LENGTH}"], id="1000-stars"),
        pytest.param("a" * (MAX_GLOB_LENGTH + 1), [f"the limit is {MAX_GLOB_LENGTH}"], id="too-long"),
        pytest.param("*a" * (MAX_GLOB_WILDCARDS + 1), [f"the limit is {MAX_GLOB_WILDCARDS}", "wildcards"],
                     id="too-many-wildcards"),
    ],
)
def test_invalid_patterns_are_refused_by_the_one_validator(pattern: str, fragments: list[str]) -> None:
    for check in (validate_glob, compile_glob, literal_count):
        with pytest.raises(GlobError) as info:
            check(pattern)
        for fragment in fragments:
            assert fragment in str(info.value)
    assert len(str(info.value)) < 300  # a long pattern is not echoed whole


def test_limits_are_inclusive() -> None:
    assert validate_glob("a" * MAX_GLOB_LENGTH)
    assert compile_glob("*a" * (MAX_GLOB_WILDCARDS - 1) + "*").match("a" * 40)


@pytest.mark.parametrize(
    ("patterns", "model", "winner"),
    [
        pytest.param(["*", "gpt-*", "gpt-4o"], "gpt-4o", "gpt-4o", id="most-literals-wins"),
        pytest.param(["gpt-?o", "gpt-4?"], "gpt-4o", "gpt-?o", id="tie-goes-to-first"),
        pytest.param(["[gG]pt*", "*"], "Gpt-x", "[gG]pt*", id="class-is-not-literal"),
        pytest.param(["llama*"], "gpt-4o", None, id="no-match"),
    ],
)
def test_best_match(patterns: list[str], model: str, winner: str | None) -> None:
    compiled = [(compile_glob(p), literal_count(p), p) for p in patterns]
    assert best_match(model, compiled) == winner
