"""Budget periods: how each budget scope's time is cut into periods, and UTC day buckets.

A `PeriodRule` cuts time into periods. In production it is calendar months in UTC that start at 00:00 on
the scope's reset day (1-28), named by the month in which they start (`2026-11` for Nov 15 - Dec 14 with
reset_day 15). For tests and local experiments only (`[testing] budget_period_seconds`), it is periods of
a fixed number of seconds counted from an anchor instant, named by their start (`20261201T202015Z`), so
a rollover can be a few seconds ahead instead of at a real month end.

A `BudgetCalendar` holds the rule of every budget scope: the global budget's, and the rules of scopes that
have their own (a key budget with its own reset day). Scopes without one follow the global rule.

Everything that buckets spend (router-node telemetry and leases, the budget worker, the admin API) derives
the period here from one timestamp and the scope's rule, so they can never disagree about which period a
request belongs to.

Invariants:
- `rule.start(ts) <= ts < rule.end(ts)`, `rule.end(ts)` is the next period's start, and every `ts` in
  `[start, end)` has the same `rule.name(ts)`; distinct periods of one rule have distinct names.
- Boundaries fall on whole seconds: a timestamp is floored to its second before any calendar arithmetic
  (`datetime.fromtimestamp` would round 23:59:59.9999997 up into the next day, month or year).
- Only UTC is used; local time zones and their DST changes cannot move a boundary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["MAX_RESET_DAY", "MONTHLY", "BudgetCalendar", "PeriodRule", "day_of", "period_of"]

MAX_RESET_DAY = 28  # every month has a 28th


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(math.floor(ts), UTC)


def _month_start(year: int, month: int, day: int) -> datetime:
    while month < 1:
        year, month = year - 1, month + 12
    while month > 12:
        year, month = year + 1, month - 12
    return datetime(year, month, day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class PeriodRule:
    """Calendar months starting on `reset_day`, or (`seconds` > 0, tests only) fixed-length periods
    starting at `anchor + k * seconds`."""

    reset_day: int = 1
    seconds: int = 0
    anchor: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.reset_day <= MAX_RESET_DAY:
            raise ValueError(f"reset_day must be 1-{MAX_RESET_DAY}, got {self.reset_day}")
        if self.seconds < 0:
            raise ValueError(f"period seconds must not be negative, got {self.seconds}")

    def _month(self, ts: float) -> datetime:
        moment = _utc(ts)
        back = 1 if moment.day < self.reset_day else 0
        return _month_start(moment.year, moment.month - back, self.reset_day)

    def start(self, ts: float) -> float:
        """Unix seconds at which the period holding `ts` starts."""
        if self.seconds:
            return self.anchor + math.floor((ts - self.anchor) / self.seconds) * self.seconds
        return self._month(ts).timestamp()

    def end(self, ts: float) -> float:
        """Unix seconds at which the period holding `ts` ends (the next one starts)."""
        if self.seconds:
            return self.start(ts) + self.seconds
        first = self._month(ts)
        return _month_start(first.year, first.month + 1, self.reset_day).timestamp()

    def name(self, ts: float) -> str:
        if self.seconds:
            return _utc(self.start(ts)).strftime("%Y%m%dT%H%M%SZ")
        first = self._month(ts)
        return f"{first.year:04d}-{first.month:02d}"

    def previous(self, ts: float) -> str:
        """The name of the period before the one holding `ts`."""
        return self.name(self.start(ts) - 1)


MONTHLY = PeriodRule()  # calendar months from the 1st: the default rule


@dataclass(frozen=True, slots=True)
class BudgetCalendar:
    """The period rule of every budget scope: `scopes` for those with their own, `default` (the global
    budget's) for every other."""

    default: PeriodRule = MONTHLY
    scopes: Mapping[str, PeriodRule] = field(default_factory=dict)

    def rule(self, scope: str) -> PeriodRule:
        return self.scopes.get(scope, self.default)

    def period(self, scope: str, ts: float) -> str:
        return self.rule(scope).name(ts)

    def periods(self, scopes: Iterable[str], ts: float) -> dict[str, str]:
        """Scope -> the name of its period holding `ts`."""
        return {scope: self.rule(scope).name(ts) for scope in scopes}


def period_of(ts: float, reset_day: int = 1) -> str:
    """The name of the calendar-month period holding `ts` for `reset_day`."""
    return PeriodRule(reset_day).name(ts)


def day_of(ts: float) -> str:
    """The UTC day (`YYYY-MM-DD`) holding `ts`."""
    return _utc(ts).strftime("%Y-%m-%d")
