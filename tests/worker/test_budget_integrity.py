"""Every budget tick checks that each period's totals equal the sum of each breakdown, with a metric when they
do not (issue 12, finding 5: a half-applied script once left `total.requests` at 404 against 403 summed over
backends). That a record past the counters' bounds is quarantined, not half-applied, is
tests/core/test_telemetry_store.py's.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.periods import period_of
from nexus.core.telemetry_store import TelemetryRecord
from nexus.worker.jobs import run_budget
from nexus.worker.metrics import AGGREGATE_INCONSISTENCIES
from tests.harness import settings_for
from tests.stored import put_records


def rec(i: int, now: float, **kw) -> TelemetryRecord:
    fields = {"cost_usd": 0.01, "prompt_tokens": 5, "completion_tokens": 7, **kw}
    return TelemetryRecord(id=f"r{i}", ts=now, node="n", backend=f"b{i % 3}", model="m", **fields)


async def test_an_inconsistent_aggregate_is_reported_with_a_metric(redis: Redis) -> None:
    now = time.time()
    period = period_of(now)
    await put_records(redis, [rec(i, now) for i in range(5)])
    await run_budget(redis, settings_for([]), now)
    await redis.hincrby(keys.telemetry_agg(period), "total.requests", 1)  # as a half-applied script once left it
    before = AGGREGATE_INCONSISTENCIES.labels(period)._value.get()
    result = await run_budget(redis, settings_for([]), now)
    assert result["inconsistent"][period] == [
        "total.requests = 6 but the sum over backend is 5", "total.requests = 6 but the sum over model is 5"]
    assert AGGREGATE_INCONSISTENCIES.labels(period)._value.get() == before + 1
