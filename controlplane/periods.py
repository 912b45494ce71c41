"""Budget periods: calendar months in UTC that start on a configurable reset day.

A period is named by the month in which it starts (`2026-11` for Nov 15 - Dec 14 with reset_day 15).
Everything that buckets spend (router-node telemetry, the budget worker, the admin spend report) derives
the period here from one timestamp, so they can never disagree about which period a request belongs to.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["day_of", "period_of"]


def period_of(ts: float, reset_day: int = 1) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    year, month = moment.year, moment.month
    if moment.day < reset_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
