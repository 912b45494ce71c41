"""controlplane.aggregates: what counts as an error, which integer counters a record adds, parsing back."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.aggregates import (
    Totals,
    is_attempt,
    is_error,
    parse_aggregate,
    parse_quality_hour,
    quality_increments,
    record_increments,
    sum_increments,
    to_nano,
)
from controlplane.telemetry_store import TelemetryRecord

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
