"""nexus.worker.schedule: configured intervals become even UTC wall-clock grids, never rarer than configured."""

from __future__ import annotations

import pytest

from nexus.worker.schedule import cron_fields, effective_interval, tick_of


@pytest.mark.parametrize(
    ("configured", "effective"),
    [
        pytest.param(0.2, 1, id="sub-second-runs-every-second"),
        pytest.param(1, 1, id="one-second"),
        pytest.param(7, 6, id="7s-rounds-down-to-6s"),
        pytest.param(10, 10, id="default-health-10s"),
        pytest.param(45, 30, id="45s-rounds-down-to-30s"),
        pytest.param(59.9, 30, id="just-under-a-minute"),
        pytest.param(60, 60, id="default-budget-60s"),
        pytest.param(90, 60, id="90s-rounds-down-to-a-minute"),
        pytest.param(600, 600, id="ten-minutes"),
        pytest.param(3599, 1800, id="just-under-an-hour"),
        pytest.param(3600, 3600, id="an-hour"),
        pytest.param(5 * 3600, 4 * 3600, id="5h-rounds-down-to-4h"),
        pytest.param(3 * 86400, 86400, id="longer-than-a-day-is-daily"),
    ],
)
def test_effective_interval_rounds_down_to_an_even_grid(configured: float, effective: int) -> None:
    assert effective_interval(configured) == effective


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_effective_interval_refuses_non_positive_or_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        effective_interval(bad)


@pytest.mark.parametrize(
    ("interval", "offset", "fields"),
    [
        pytest.param(10, 0, {"second": {0, 10, 20, 30, 40, 50}}, id="every-10s"),
        pytest.param(10, 6, {"second": {6, 16, 26, 36, 46, 56}}, id="every-10s-offset-6"),
        pytest.param(30, 2, {"second": {2, 32}}, id="every-30s-offset-2"),
        pytest.param(1, 4, {"second": set(range(60))}, id="every-second-ignores-offset"),
        pytest.param(60, 4, {"second": {4}, "minute": set(range(60))}, id="every-minute"),
        pytest.param(900, 0, {"second": {0}, "minute": {0, 15, 30, 45}}, id="every-15-minutes"),
        pytest.param(6 * 3600, 0, {"second": {0}, "minute": {0}, "hour": {0, 6, 12, 18}}, id="every-6-hours"),
    ],
)
def test_cron_fields(interval: float, offset: int, fields: dict[str, set[int]]) -> None:
    assert cron_fields(interval, offset) == fields


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        pytest.param("nexus.budget:1795568807123", 1795568807123, id="unique-cron-id"),
        pytest.param("9f2c1e", 42, id="random-id-falls-back"),
        pytest.param("nexus.budget:", 42, id="empty-tail-falls-back"),
    ],
)
def test_tick_of(job_id: str, expected: int) -> None:
    assert tick_of(job_id, 42) == expected
