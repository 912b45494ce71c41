"""Instants for tests, relative to the real now: never a pinned calendar date.

Redis expires keys by its own clock, so a test that writes through production code (which sets expiries from
the timestamps it is given) must give timestamps a real clock agrees with. An instant ahead of the real now
is always safe (every expiry computed from it lies further ahead); one in the past is safe only while it is
younger than the shortest expiry involved (quality hours: 26 h after their hour starts).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from nexus.core.periods import PeriodRule

__all__ = ["STEADY_SECONDS", "knobs_for", "next_day_start", "steady_period"]


def next_day_start(day: int, after: float | None = None) -> float:
    """00:00 UTC of the next day-of-month `day` (1-28) strictly after `after` (default: the real now)."""
    moment = datetime.fromtimestamp(time.time() if after is None else after, UTC)
    year, month = moment.year, moment.month
    while True:
        start = datetime(year, month, day, tzinfo=UTC)
        if start > moment:
            return start.timestamp()
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


STEADY_SECONDS = 31 * 86400  # the longest [testing] budget period


def steady_period(now: float | None = None) -> PeriodRule:
    """A [testing] budget period that began an hour before `now` (default: the real now) and lasts 31 days:
    no rollover can fall inside a test that uses it, whatever the date. Tests of budgets *within* a period
    use it, so a real month end passing during the run cannot reset their spend half-way."""
    start = int(time.time() if now is None else now) - 3600
    return PeriodRule(seconds=STEADY_SECONDS, anchor=start)


def knobs_for(rule: PeriodRule, **extra: float) -> dict[str, float]:
    """The `[testing]` section that makes every process cut budget time by `rule`."""
    return {"budget_period_seconds": rule.seconds, "budget_period_anchor": rule.anchor, **extra}
