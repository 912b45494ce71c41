"""Cron schedules for the worker loops: configured intervals as arq `cron()` field sets, and tick ids.

arq schedules by wall-clock fields (second, minute, hour), evaluated in UTC here, so every worker process
computes the same tick times whatever its local timezone, and all of them name a tick identically
(`<job name>:<unix ms of the tick>`), which is what makes arq's cron uniqueness work across processes.

Rule for intervals (documented for operators in the worker package docstring):
- An interval is rounded DOWN to the nearest one that divides the minute (1, 2, 3, 4, 5, 6, 10, 12, 15,
  20, 30 s), the hour (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 min) or the day (1, 2, 3, 4, 6, 8, 12, 24 h),
  so ticks are evenly spaced and never rarer than configured (observed health older than twice the
  configured interval is treated as unknown, so running less often than asked would expire it).
- Below one second means every second; above a day means daily.
"""

from __future__ import annotations

import math

__all__ = ["cron_fields", "effective_interval", "tick_of"]

_SECONDS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)
_MINUTES = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)
_HOURS = (1, 2, 3, 4, 6, 8, 12, 24)


def _floor(value: float, allowed: tuple[int, ...]) -> int:
    return max([a for a in allowed if a <= value] or [allowed[0]])


def effective_interval(interval_seconds: float) -> int:
    """The interval (seconds) the schedule really runs at for a configured `interval_seconds`."""
    if not math.isfinite(interval_seconds) or interval_seconds <= 0:
        raise ValueError(f"an interval must be a positive number of seconds, got {interval_seconds!r}")
    if interval_seconds < 60:
        return _floor(interval_seconds, _SECONDS)
    if interval_seconds < 3600:
        return 60 * _floor(interval_seconds / 60, _MINUTES)
    return 3600 * _floor(interval_seconds / 3600, _HOURS)


def cron_fields(interval_seconds: float, offset_seconds: int = 0) -> dict[str, set[int]]:
    """`second=` / `minute=` / `hour=` sets for `arq.cron` running every `effective_interval` seconds.
    `offset_seconds` (within the first interval, or the first minute for longer ones) staggers jobs."""
    step = effective_interval(interval_seconds)
    if step < 60:
        offset = offset_seconds % step
        return {"second": set(range(offset, 60, step))}
    fields = {"second": {offset_seconds % 60}}
    if step < 3600:
        fields["minute"] = set(range(0, 60, step // 60))
    else:
        fields["minute"] = {0}
        fields["hour"] = set(range(0, 24, step // 3600))
    return fields


def tick_of(job_id: str, default_ms: int) -> int:
    """The scheduled tick (unix ms) of a unique cron job id `<name>:<ms>`, else `default_ms`."""
    _, _, tail = job_id.rpartition(":")
    return int(tail) if tail.isdigit() else default_ms
