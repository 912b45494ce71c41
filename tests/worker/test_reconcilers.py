"""nexus.worker.reconcilers: quality windows, budget observations and router-node liveness, as matrices."""

from __future__ import annotations

import pytest

from nexus.core import keys
from nexus.core.aggregates import Aggregate, MinuteCounts, Totals
from nexus.core.config import BudgetConfig, RoutingConfig
from nexus.core.model import BudgetStatus, QualityStats
from nexus.core.periods import period_of
from nexus.core.telemetry_store import NodeHeartbeat
from nexus.worker.reconcilers import observe_budgets, plan_liveness, quality_stats

NOW = 1_800_000_030.0  # 30 s into a minute (2027-01-15 08:00:30 UTC; pure code: no real clock involved)
MINUTE = NOW - 30  # start of the current minute
PERIOD = period_of(NOW)


def ago(minutes: int) -> float:
    return MINUTE - 60 * minutes


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        pytest.param({}, None, id="no-history"),
        pytest.param({ago(1440): MinuteCounts(5, 5)}, None, id="only-older-than-24h"),
        pytest.param(
            {ago(0): MinuteCounts(requests=10, errors=2, ttfb_us=8 * 250_000, ttfb_count=8)},
            QualityStats(0.2, 250.0, 0.8, 10, 10),
            id="current-minute",
        ),
        pytest.param(
            {ago(59): MinuteCounts(4, 1, 400_000, 3), ago(60): MinuteCounts(6, 6)},
            QualityStats(0.25, 400_000 / 3 / 1000, 1 - 7 / 10, 4, 10),
            id="59-min-ago-in-the-hour-60-out",
        ),
        pytest.param(
            {ago(1439): MinuteCounts(3, 3), ago(1440): MinuteCounts(100, 100)},
            QualityStats(0.0, 0.0, 0.0, 0, 3),
            id="1439-min-ago-in-the-day-1440-out",
        ),
        pytest.param(
            {ago(2): MinuteCounts(2, 2), ago(3): MinuteCounts(2, 0, 2_000, 2)},
            QualityStats(0.5, 1.0, 0.5, 4, 4),
            id="ttfb-averages-successes-only",
        ),
        pytest.param({NOW + 120: MinuteCounts(1, 0)}, QualityStats(0.0, 0.0, 1.0, 1, 1), id="clock-skew-future-counts"),
    ],
)
def test_quality_stats(minutes: dict[float, MinuteCounts], expected: QualityStats | None) -> None:
    got = quality_stats(minutes, NOW)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert (got.requests_1h, got.requests_24h) == (expected.requests_1h, expected.requests_24h)
    assert got.error_rate_1h == pytest.approx(expected.error_rate_1h)
    assert got.avg_ttfb_ms_1h == pytest.approx(expected.avg_ttfb_ms_1h)
    assert got.success_rate_24h == pytest.approx(expected.success_rate_24h)


def _agg(total_usd: float, keys_usd: dict[str, float]) -> Aggregate:
    return Aggregate(
        total=Totals(nusd=round(total_usd * 1e9)),
        by_key={k: Totals(nusd=round(v * 1e9)) for k, v in keys_usd.items()},
    )


@pytest.mark.parametrize(
    ("limit", "soft", "spend", "status"),
    [
        pytest.param(None, 0.75, 1e6, BudgetStatus.NORMAL, id="no-limit-always-normal"),
        pytest.param(10.0, 0.75, 7.49, BudgetStatus.NORMAL, id="below-soft"),
        pytest.param(10.0, 0.75, 7.5, BudgetStatus.SOFT_LIMIT, id="at-soft"),
        pytest.param(10.0, 0.75, 9.99, BudgetStatus.SOFT_LIMIT, id="below-hard"),
        pytest.param(10.0, 0.75, 10.0, BudgetStatus.HARD_LIMIT, id="at-hard"),
        pytest.param(0.0, 0.75, 0.0, BudgetStatus.HARD_LIMIT, id="zero-limit-is-hard"),
    ],
)
def test_global_budget_status(limit: float | None, soft: float, spend: float, status: BudgetStatus) -> None:
    routing = RoutingConfig(budget=BudgetConfig(monthly_limit_usd=limit, soft_limit_percent=soft))
    obs = observe_budgets(routing, {PERIOD: _agg(spend, {})}, {"global": PERIOD}, NOW)
    assert list(obs) == ["global"]
    got = obs["global"]
    assert (got.status, got.spend_usd, got.period, got.limit_usd, got.checked_at) == (
        status,
        pytest.approx(spend),
        PERIOD,
        limit,
        NOW,
    )


def test_every_key_budget_is_observed_from_its_own_spend() -> None:
    routing = RoutingConfig(
        budget=BudgetConfig(monthly_limit_usd=100.0),
        key_budgets={"team-a": BudgetConfig(monthly_limit_usd=1.0), "team-b": BudgetConfig(monthly_limit_usd=1.0)},
    )
    periods = dict.fromkeys(routing.budgets(), PERIOD)
    obs = observe_budgets(routing, {PERIOD: _agg(3.0, {"team-a": 2.5, "other": 0.5})}, periods, NOW)
    assert {s: (o.spend_usd, o.status) for s, o in obs.items()} == {
        "global": (3.0, BudgetStatus.NORMAL),
        "team-a": (2.5, BudgetStatus.HARD_LIMIT),
        "team-b": (0.0, BudgetStatus.NORMAL),
    }
    assert obs["team-a"].utilization == pytest.approx(2.5)


def test_a_key_budget_with_its_own_period_is_observed_from_that_periods_aggregate() -> None:
    routing = RoutingConfig(
        budget=BudgetConfig(monthly_limit_usd=100.0),
        key_budgets={"team-a": BudgetConfig(monthly_limit_usd=1.0, reset_day=16)},
    )
    calendar = routing.calendar()
    periods = calendar.periods(routing.budgets(), NOW)
    assert periods == {"global": "2027-01", "team-a": "2026-12"}  # NOW is Jan 15: team-a's began on Dec 16
    aggregates = {periods["global"]: _agg(3.0, {"team-a": 0.1}), periods["team-a"]: _agg(0.0, {"team-a": 1.5})}
    obs = observe_budgets(routing, aggregates, periods, NOW)
    assert {s: (o.spend_usd, o.period, o.status) for s, o in obs.items()} == {
        "global": (3.0, periods["global"], BudgetStatus.NORMAL),
        "team-a": (1.5, periods["team-a"], BudgetStatus.HARD_LIMIT),
    }
    # no aggregate yet for a period (nothing rolled up since it began): zero spend, not an error
    assert observe_budgets(routing, {}, periods, NOW)["team-a"].spend_usd == 0.0


def beat(node: str, age: float, *, gone: bool = False) -> NodeHeartbeat:
    return NodeHeartbeat(node=node, at=NOW - age, started_at=NOW - 1000, gone=gone)


@pytest.mark.parametrize(
    ("beats", "mark", "forget"),
    [
        pytest.param([beat("a", 1)], [], [], id="fresh-node-left-alone"),
        pytest.param([beat("a", keys.NODE_STALE_SECONDS)], [], [], id="exactly-at-the-horizon-is-alive"),
        pytest.param([beat("a", keys.NODE_STALE_SECONDS + 1)], ["a"], [], id="stale-node-marked"),
        pytest.param([beat("a", 60, gone=True)], [], [], id="already-gone-not-marked-again"),
        pytest.param([beat("a", keys.NODE_GONE_RETENTION_SECONDS + 1, gone=True)], [], ["a"], id="long-gone-forgotten"),
        pytest.param([beat("c", 45), beat("a", 45), beat("b", 2)], ["a", "c"], [], id="several-nodes-sorted-by-name"),
    ],
)
def test_plan_liveness(beats: list[NodeHeartbeat], mark: list[str], forget: list[str]) -> None:
    plan = plan_liveness({b.node: b for b in beats}, NOW)
    assert [b.node for b in plan.mark_gone] == mark
    assert [b.node for b in plan.forget] == forget


def test_an_observation_carries_the_budget_it_was_computed_from() -> None:
    routing = RoutingConfig(budget=BudgetConfig(monthly_limit_usd=10.0, soft_limit_percent=0.5))
    obs = observe_budgets(routing, {PERIOD: _agg(6.0, {})}, {"global": PERIOD}, NOW)["global"]
    # 60 % is past a 50 % soft limit (the default 75 % would say normal)
    assert (obs.status, obs.limit_usd, obs.soft_limit_fraction, obs.utilization, obs.period, obs.checked_at) == (
        BudgetStatus.SOFT_LIMIT, 10.0, 0.5, pytest.approx(0.6), PERIOD, NOW)


def test_quality_windows_start_at_the_59th_and_1439th_minute_before_the_current_one() -> None:
    minutes = {
        ago(1440): MinuteCounts(requests=100, errors=100),  # just outside 24 h, listed first
        ago(1439): MinuteCounts(requests=4, errors=1),
        ago(60): MinuteCounts(requests=8, errors=8),  # just outside the hour
        ago(59): MinuteCounts(requests=2, errors=1, ttfb_us=300_000, ttfb_count=1),
        ago(0): MinuteCounts(requests=2, ttfb_us=100_000, ttfb_count=1),
    }
    stats = quality_stats(minutes, NOW)
    assert stats is not None
    assert (stats.requests_1h, stats.requests_24h) == (4, 16)
    assert stats.error_rate_1h == pytest.approx(1 / 4)
    assert stats.avg_ttfb_ms_1h == pytest.approx(200.0)  # (300 + 100) / 2 over both minutes
    assert stats.success_rate_24h == pytest.approx(1 - 10 / 16)


def test_a_gone_node_is_forgotten_only_after_the_whole_retention() -> None:
    keep, drop = beat("keep", 1000.0, gone=True), beat("drop", 1000.001, gone=True)
    plan = plan_liveness({"keep": keep, "drop": drop}, NOW, stale_after=10.0, retention=1000.0)
    assert [b.node for b in plan.forget] == ["drop"] and plan.mark_gone == ()
    stale = plan_liveness({"s": beat("s", 10.0)}, NOW, stale_after=10.0, retention=1000.0)
    assert stale.mark_gone == ()  # exactly at the stale horizon: not yet
