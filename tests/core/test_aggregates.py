"""nexus.core.aggregates: what counts as an error, which integer counters a record adds, parsing back."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.core.aggregates import (
    MinuteCounts,
    Totals,
    is_attempt,
    is_error,
    parse_aggregate,
    parse_quality_hour,
    quality_increments,
    record_increments,
    to_nano,
)
from nexus.core.telemetry_store import TelemetryRecord
from tests.stored import sum_increments

NOW = 1_795_566_000.0  # 2026-11-25 00:20:00 UTC


def rec(rid: str = "r1", **fields: Any) -> TelemetryRecord:
    return TelemetryRecord(**{"id": rid, "ts": NOW, "node": "n", "backend": "b", "model": "m", **fields})


@pytest.mark.parametrize(
    ("outcome", "status", "error"),
    [
        pytest.param("ok", 200, False, id="ok"),
        pytest.param("client_disconnected", 200, False, id="client-disconnected-is-not-the-backend"),
        pytest.param("upstream_error", 502, True, id="upstream-error"),
        pytest.param("midstream_error", 200, True, id="midstream-error"),
        pytest.param("http_500", 500, True, id="answered-500"),
        pytest.param("http_503", 503, True, id="answered-503"),
        pytest.param("http_429", 429, True, id="rate-limited"),
        pytest.param("http_400", 400, False, id="answered-400-client-fault"),
        pytest.param("http_404", 404, False, id="answered-404"),
        pytest.param("http_error", 502, True, id="legacy-http-error-5xx"),
        # the outcome decides before the status does: a request that went fine, or a client that left, is
        # never the backend's error whatever status was recorded
        pytest.param("ok", 500, False, id="ok-whatever-the-status"),
        pytest.param("client_disconnected", 502, False, id="disconnected-whatever-the-status"),
    ],
)
def test_is_error(outcome: str, status: int, error: bool) -> None:
    assert is_error(rec(outcome=outcome, status=status)) is error


def test_a_final_record_counts_under_every_dimension() -> None:
    r = rec(model="llama3:8b", key="team-a", cost_usd=0.0015, prompt_tokens=10, completion_tokens=20)
    assert record_increments(r) == {
        f"{dim}.{metric}": n
        for dim in ("total",)
        for metric, n in (("requests", 1), ("nusd", 1_500_000), ("prompt_tokens", 10), ("completion_tokens", 20))
    } | {
        f"{dim}.{metric}:{value}": n
        for dim, value in (("backend", "b"), ("model", "llama3:8b"), ("key", "team-a"))
        for metric, n in (("requests", 1), ("nusd", 1_500_000), ("prompt_tokens", 10), ("completion_tokens", 20))
    }


def test_a_failed_attempt_counts_as_attempt_not_request() -> None:
    r = rec("r1:0", outcome="upstream_error", status=502)
    assert is_attempt(r)
    assert record_increments(r) == {
        "total.failed_attempts": 1,
        "backend.failed_attempts:b": 1,
        "model.failed_attempts:m": 1,
    }


def test_an_errored_request_counts_as_error() -> None:
    assert record_increments(rec(outcome="midstream_error"))["backend.errors:b"] == 1


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"ttfb_ms": 12.3456}, ("2026112500", {"20.requests": 1, "20.ttfb_us": 12346, "20.ttfb_count": 1}), id="ok"
        ),
        pytest.param(
            {"outcome": "upstream_error", "ttfb_ms": 5.0},
            ("2026112500", {"20.requests": 1, "20.errors": 1}),
            id="error-has-no-ttfb",
        ),
        pytest.param({"ttfb_ms": None}, ("2026112500", {"20.requests": 1}), id="no-ttfb-reported"),
        pytest.param({"ts": NOW - 86401}, None, id="older-than-the-24h-window"),
    ],
)
def test_quality_increments(fields: dict[str, Any], expected: Any) -> None:
    assert quality_increments(rec(**fields), NOW) == expected


def test_parse_aggregate_inverts_the_increments() -> None:
    records = [
        rec("a", model="llama3:8b", key="k1", cost_usd=0.1, prompt_tokens=5, completion_tokens=7),
        rec("b", model="llama3:8b", backend="c", cost_usd=0.2, outcome="http_500", status=500),
        rec("a:0", outcome="upstream_error", status=502),
    ]
    agg = parse_aggregate({k.encode(): str(v).encode() for k, v in sum_increments(records).items()})
    assert agg.total == Totals(
        requests=2, failed_attempts=1, errors=1, nusd=to_nano(0.1) + to_nano(0.2), prompt_tokens=5, completion_tokens=7
    )
    assert agg.total.usd == pytest.approx(0.3)
    assert set(agg.by_model) == {"llama3:8b", "m"}
    assert agg.by_model["llama3:8b"].requests == 2
    assert agg.by_backend["b"] == Totals(
        requests=1, failed_attempts=1, nusd=to_nano(0.1), prompt_tokens=5, completion_tokens=7
    )
    assert agg.by_key == {"k1": Totals(requests=1, nusd=to_nano(0.1), prompt_tokens=5, completion_tokens=7)}
    assert agg.scope_usd("global", "global") == pytest.approx(0.3)
    assert agg.scope_usd("k1", "global") == pytest.approx(0.1)
    assert agg.scope_usd("nobody", "global") == 0.0


def test_parse_aggregate_ignores_unknown_fields() -> None:
    agg = parse_aggregate(
        {
            "total.requests": "3",
            "total.future_metric": "9",
            "moon.requests:x": "1",
            "total.requests:x": "5",
            "backend.requests": "4",
        }
    )
    assert agg.total == Totals(requests=3)
    assert agg.by_backend == {}


def test_parse_quality_hour() -> None:
    raw = {
        b"00.requests": b"3",
        b"00.errors": b"1",
        b"59.requests": b"2",
        b"60.requests": b"9",
        b"xx.requests": b"1",
        b"05.other": b"4",
    }
    minutes = parse_quality_hour("2026112500", raw)
    start = 1_795_564_800.0  # 2026-11-25 00:00 UTC
    assert set(minutes) == {start, start + 59 * 60}
    assert (minutes[start].requests, minutes[start].errors) == (3, 1)


def test_parse_aggregate_keeps_values_with_dots_and_colons_and_sorts_each_breakdown() -> None:
    raw = {
        "bogus": "1",  # an unknown field first: the fields after it still count
        "model.requests:zeta-1.5:8b": "2",
        "model.requests:alpha.v2": "3",
        "key.nusd:team.b": "7",
        "key.nusd:team.a": "5",
    }
    agg = parse_aggregate(raw)
    assert agg.total == Totals()  # no total fields at all: zeros
    assert list(agg.by_model) == ["alpha.v2", "zeta-1.5:8b"]  # sorted by name, dots and colons kept
    assert agg.by_model["zeta-1.5:8b"].requests == 2
    assert list(agg.by_key) == ["team.a", "team.b"] and agg.by_key["team.b"].nusd == 7


def test_parse_quality_hour_reads_past_unknown_fields() -> None:
    start = 1_795_564_800.0  # 2026-11-25 00:00 UTC, pure parsing
    got = parse_quality_hour("2026112500", {"junk": "9", "05.requests": "3", "99.requests": "1", "07.errors": "1"})
    assert got == {start + 300: MinuteCounts(requests=3), start + 420: MinuteCounts(errors=1)}


def test_totals_as_dict_names_every_figure() -> None:
    t = Totals(requests=3, failed_attempts=1, errors=2, nusd=1_500_000_000, prompt_tokens=10, completion_tokens=20)
    assert t.as_dict() == {"usd": 1.5, "requests": 3, "errors": 2, "failed_attempts": 1, "prompt_tokens": 10,
                           "completion_tokens": 20}


def test_quality_window_includes_its_first_second() -> None:
    from nexus.core.aggregates import QUALITY_WINDOW_SECONDS

    assert quality_increments(rec(ts=NOW - QUALITY_WINDOW_SECONDS), NOW) is not None
    assert quality_increments(rec(ts=NOW - QUALITY_WINDOW_SECONDS - 0.001), NOW) is None


def test_only_key_fields_are_key_fields() -> None:
    from nexus.core.aggregates import is_key_field

    fields = record_increments(rec(key="team-a", cost_usd=0.5))
    assert {f for f in fields if is_key_field(f)} == {"key.requests:team-a", "key.nusd:team-a"}
    assert not is_key_field("total.nusd") and not is_key_field("model.requests:key.x")
