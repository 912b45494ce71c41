"""The calendar sweep: period, day, hour and minute arithmetic and every TTL derived from them, over random
instants from 2000 to 2100 and the named edge cases (month ends, Dec 31 -> Jan 1, Feb 28/29 in leap and
non-leap years, each reset day 1-28 at its boundary, DST changes in a local time zone).

Pure code, no clock read: every instant is an argument, so these hold on any date the suite runs. The oracle
for period names is written independently of `nexus.core.periods` (the latest reset-day midnight at or
before the instant, found by walking calendar months with `datetime`, never by the module's arithmetic).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus.core import keys
from nexus.core.aggregates import (
    QUALITY_WINDOW_SECONDS,
    day_start,
    hour_of,
    hour_start,
    parse_quality_hour,
    quality_increments,
)
from nexus.core.batching import TelemetryBatch, batch_write
from nexus.core.periods import BudgetCalendar, PeriodRule, day_of, period_of
from nexus.core.telemetry_store import TelemetryRecord

Y2000 = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
Y2100 = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
DAY = 86400.0
SWEEP = settings(max_examples=1500, deadline=None, derandomize=True)

instants = st.floats(min_value=Y2000, max_value=Y2100, allow_nan=False, allow_infinity=False)
whole_seconds = st.integers(min_value=int(Y2000), max_value=int(Y2100))
reset_days = st.integers(min_value=1, max_value=28)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def oracle_start(ts: float, reset_day: int) -> datetime:
    """The latest 00:00 UTC on `reset_day` at or before `ts`, by walking months back from ts's month."""
    moment = datetime.fromtimestamp(int(ts // 1), UTC)
    year, month = moment.year, moment.month
    while True:
        start = datetime(year, month, reset_day, tzinfo=UTC)
        if start.timestamp() <= ts:
            return start
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)


def next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


# -- monthly periods over random instants --------------------------------------------------------------------
@SWEEP
@given(instants, reset_days)
@example(utc(2026, 12, 31, 23, 59, 59) + 0.9999997, 1)  # fromtimestamp would round this into January
@example(utc(2028, 2, 29, 12), 28)
def test_a_monthly_period_holds_its_instant_and_is_named_by_its_start_month(ts: float, reset_day: int) -> None:
    rule = PeriodRule(reset_day)
    start, end = rule.start(ts), rule.end(ts)
    expected = oracle_start(ts, reset_day)
    assert start == expected.timestamp()
    assert end == next_month(expected).timestamp()
    assert start <= ts < end
    assert rule.name(ts) == period_of(ts, reset_day) == f"{expected.year:04d}-{expected.month:02d}"
    assert rule.name(start) == rule.name(end - 1) == rule.name(end - 1e-6) == rule.name(ts)
    assert rule.name(end) != rule.name(ts) and rule.name(start - 1) == rule.previous(ts) != rule.name(ts)
    assert rule.start(end) == end and rule.end(start) == end
    assert 28 * DAY <= end - start <= 31 * DAY


@SWEEP
@given(whole_seconds, reset_days, st.integers(min_value=1, max_value=40))
def test_period_names_are_ordered_like_time(ts: int, reset_day: int, days_later: int) -> None:
    rule = PeriodRule(reset_day)
    later = ts + days_later * DAY
    assert rule.name(ts) <= rule.name(later)  # YYYY-MM sorts as time
    assert (rule.name(ts) == rule.name(later)) == (later < rule.end(ts))


# -- fixed-length periods (the [testing] rule) ------------------------------------------------------------
@SWEEP
@given(instants, st.integers(min_value=1, max_value=31 * 86400), st.integers(min_value=0, max_value=int(Y2100)))
def test_a_fixed_length_period_holds_its_instant(ts: float, seconds: int, anchor: int) -> None:
    rule = PeriodRule(seconds=seconds, anchor=anchor)
    start, end = rule.start(ts), rule.end(ts)
    assert start <= ts < end and end - start == seconds
    assert (start - anchor) % seconds == 0
    assert rule.name(start) == rule.name(ts) == rule.name(end - 1e-3) != rule.name(end)
    assert rule.name(ts) == datetime.fromtimestamp(start, UTC).strftime("%Y%m%dT%H%M%SZ")
    assert rule.previous(ts) == rule.name(start - seconds)


# -- days, hours, minutes -------------------------------------------------------------------------------------
@SWEEP
@given(instants)
@example(utc(2026, 12, 31, 23, 59, 59) + 0.9999997)
@example(utc(2028, 2, 29, 23, 59, 59))
def test_day_hour_and_minute_buckets_hold_their_instant(ts: float) -> None:
    day = day_of(ts)
    assert day_start(day) <= ts < day_start(day) + DAY
    assert day == datetime.fromtimestamp(day_start(day), UTC).strftime("%Y-%m-%d")
    hour = hour_of(ts)
    assert hour_start(hour) <= ts < hour_start(hour) + 3600
    assert hour.startswith(day.replace("-", ""))
    rec = TelemetryRecord(id="r", ts=ts, node="n", backend="b", model="m", ttfb_ms=1.0)
    got = quality_increments(rec, now=ts)
    assert got is not None and got[0] == hour
    (minute_start,) = parse_quality_hour(hour, got[1])
    assert minute_start <= ts < minute_start + 60 and minute_start == ts // 60 * 60


# -- TTLs derived from instants ---------------------------------------------------------------------------------
@SWEEP
@given(instants, reset_days, st.floats(min_value=0, max_value=2 * DAY))
def test_a_batch_sets_each_key_to_outlive_its_period(ts: float, reset_day: int, lag: float) -> None:
    """A record of instant `ts` flushed `lag` later: its live spend outlives the period by a week, the aggregate
    by a year, and its quality hour every 24 h window that reads it."""
    rule = PeriodRule(reset_day)
    rec = TelemetryRecord(id="r", ts=ts, node="n", backend="b", model="m", cost_usd=0.01, ttfb_ms=1.0)
    w = batch_write(TelemetryBatch("w", 1, (rec,), ts + lag), BudgetCalendar(rule))
    expiry = {key: w.expiries[i + 1] for i, key in enumerate(w.keys) if i + 1 in w.expiries}
    end = rule.end(ts)
    assert expiry[keys.telemetry_spend(rule.name(ts))] > end + 7 * DAY
    assert expiry[keys.telemetry_agg(rule.name(ts))] > end + 365 * DAY
    if lag < QUALITY_WINDOW_SECONDS:
        assert expiry[keys.telemetry_quality("b", hour_of(ts))] > ts + QUALITY_WINDOW_SECONDS


@SWEEP
@given(instants, st.floats(min_value=0, max_value=QUALITY_WINDOW_SECONDS))
def test_a_quality_hour_lives_as_long_as_any_window_reads_it(ts: float, read_later: float) -> None:
    expire_at = hour_start(hour_of(ts)) + keys.TELEMETRY_QUALITY_TTL_SECONDS
    assert expire_at > ts + read_later  # a 24 h window read at any time up to 24 h later still finds it


@SWEEP
@given(instants, reset_days, st.floats(min_value=0, max_value=2 * DAY))
def test_spend_leases_and_aggregates_outlive_their_period(ts: float, reset_day: int, flush_lag: float) -> None:
    rule = PeriodRule(reset_day)
    end = rule.end(ts)
    # live spend and leases are refreshed by every write in the period: the last one is before `end`
    assert rule.start(ts) + keys.TELEMETRY_SPEND_TTL_SECONDS > end + 7 * DAY  # a week to close the period
    # the aggregate is (re)set to live 400 days from each batch of the period's records
    assert ts + flush_lag + keys.TELEMETRY_AGG_TTL_SECONDS > end + 365 * DAY  # a year of history after it


# -- named edge cases ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("moment", "reset_day", "name"),
    [
        pytest.param(utc(2026, 11, 30, 23, 59, 59), 1, "2026-11", id="last-second-of-november"),
        pytest.param(utc(2026, 12, 1), 1, "2026-12", id="first-second-of-december"),
        pytest.param(utc(2026, 12, 31, 23, 59, 59), 1, "2026-12", id="last-second-of-the-year"),
        pytest.param(utc(2027, 1, 1), 1, "2027-01", id="new-year"),
        pytest.param(utc(2026, 12, 31, 23, 59, 59), 15, "2026-12", id="dec31-reset15"),
        pytest.param(utc(2027, 1, 1), 15, "2026-12", id="jan1-reset15-still-december"),
        pytest.param(utc(2027, 1, 14, 23, 59, 59), 15, "2026-12", id="jan14-reset15"),
        pytest.param(utc(2027, 1, 15), 15, "2027-01", id="jan15-reset15"),
        pytest.param(utc(2028, 2, 29), 1, "2028-02", id="leap-day"),
        pytest.param(utc(2028, 2, 29, 23, 59, 59), 28, "2028-02", id="leap-day-reset28"),
        pytest.param(utc(2028, 3, 1), 1, "2028-03", id="after-leap-day"),
        pytest.param(utc(2028, 3, 27, 23, 59, 59), 28, "2028-02", id="mar27-reset28-leap"),
        pytest.param(utc(2027, 2, 28), 28, "2027-02", id="feb28-reset28-non-leap"),
        pytest.param(utc(2027, 2, 27, 23, 59, 59), 28, "2027-01", id="feb27-reset28-non-leap"),
        pytest.param(utc(2027, 3, 1), 28, "2027-02", id="mar1-reset28-non-leap"),
        pytest.param(utc(2100, 2, 28), 1, "2100-02", id="2100-is-not-leap"),
        pytest.param(utc(2100, 3, 1) - 1, 1, "2100-02", id="2100-feb-ends-on-the-28th"),
        pytest.param(utc(2000, 2, 29), 1, "2000-02", id="2000-is-leap"),
    ],
)
def test_named_edge_cases(moment: float, reset_day: int, name: str) -> None:
    assert period_of(moment, reset_day) == name


@pytest.mark.parametrize(
    ("year", "feb_days"), [(2027, 28), (2028, 29), (2100, 28), (2000, 29)], ids=["2027", "2028", "2100", "2000"]
)
def test_february_periods_last_as_long_as_february(year: int, feb_days: int) -> None:
    for reset_day in range(1, 29):
        rule = PeriodRule(reset_day)
        assert rule.end(utc(year, 2, reset_day)) - utc(year, 2, reset_day) == feb_days * DAY
        assert rule.end(utc(year, 1, reset_day)) - utc(year, 1, reset_day) == 31 * DAY


def _boundaries() -> Iterator[tuple[int, int, int]]:
    for reset_day in range(1, 29):
        for year, month in ((2027, 1), (2027, 2), (2027, 3), (2028, 2), (2028, 3), (2026, 12)):
            yield reset_day, year, month


@pytest.mark.parametrize(("reset_day", "year", "month"), list(_boundaries()), ids=lambda v: str(v))
def test_every_reset_day_at_its_boundary(reset_day: int, year: int, month: int) -> None:
    boundary = utc(year, month, reset_day)
    before, after = boundary - 1, boundary
    rule = PeriodRule(reset_day)
    prev = datetime(year - 1, 12, 1) if month == 1 else datetime(year, month - 1, 1)
    assert rule.name(after) == f"{year:04d}-{month:02d}"
    assert rule.name(before) == f"{prev.year:04d}-{prev.month:02d}"
    assert rule.name(before + 0.999999) == rule.name(before)  # the last microseconds stay before
    assert rule.start(after) == boundary == rule.end(before)
    assert day_of(before) == (datetime(year, month, reset_day) - timedelta(days=1)).strftime("%Y-%m-%d")


@pytest.mark.parametrize(
    "zone", ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"], ids=lambda z: z
)
def test_a_dst_change_in_the_local_zone_changes_nothing(monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    """Periods and buckets are UTC: the process's local zone, and its DST changes, cannot move them."""
    moments = [
        utc(2026, 3, 8, 6, 59, 59), utc(2026, 3, 8, 7), utc(2026, 3, 29, 0, 59, 59), utc(2026, 3, 29, 1),
        utc(2026, 10, 25, 0, 59, 59), utc(2026, 10, 25, 1), utc(2026, 11, 1, 5, 59, 59), utc(2026, 11, 1, 6),
        utc(2026, 4, 4, 15), utc(2026, 10, 3, 16), utc(2026, 3, 31, 23, 59, 59), utc(2026, 11, 1),
    ]
    calendar = BudgetCalendar(PeriodRule(1), {"k": PeriodRule(8)})

    def observe() -> list[tuple[str, ...]]:
        return [
            (period_of(t), calendar.period("k", t), day_of(t), hour_of(t), str(PeriodRule(8).start(t)),
             str(day_start(day_of(t))), str(hour_start(hour_of(t))))
            for t in moments
        ]

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    in_utc = observe()
    assert [x[1] for x in in_utc] == [period_of(t, 8) for t in moments]  # "k" has its own rule
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert time.localtime(moments[0]).tm_gmtoff != 0  # the zone really is not UTC
        assert observe() == in_utc
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_calendar_gives_each_scope_its_rule_and_the_default_to_the_rest() -> None:
    t = utc(2027, 1, 10, 12)
    cal = BudgetCalendar(PeriodRule(1), {"team-a": PeriodRule(15), "team-b": PeriodRule(1)})
    assert [cal.rule(s) for s in ("team-a", "team-b", "nobody")] == [PeriodRule(15), PeriodRule(1), PeriodRule(1)]
    assert cal.periods(["global", "team-a", "nobody"], t) == {"global": "2027-01", "team-a": "2026-12",
                                                               "nobody": "2027-01"}
    assert cal.period("team-a", t) == "2026-12" and cal.period("global", t) == "2027-01"


@pytest.mark.parametrize("bad", [{"reset_day": 0}, {"reset_day": 29}, {"seconds": -1}], ids=str)
def test_a_rule_refuses_impossible_settings(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"reset_day|seconds"):
        PeriodRule(**bad)


def test_rule_edges_are_accepted() -> None:
    assert PeriodRule(28).name(utc(2027, 2, 28)) == "2027-02" and PeriodRule(1, seconds=0).seconds == 0
