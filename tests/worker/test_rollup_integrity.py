"""The rollup never leaves aggregates half-updated (issue 12, finding 5), against a real Redis.

A record with `completion_tokens = 2^64-1` (an unbounded `max_tokens` estimate) made the Lua script fail with
`ERR value is not an integer or out of range` after part of its writes, three ticks in a row, and left
`total.requests` at 404 against 403 summed over backends. Now such a record is quarantined (kept, counted,
listed by the admin API), the rest of the batch is applied, and every budget tick checks that each
period's totals equal the sum of each breakdown, with a metric when they do not.
"""

from __future__ import annotations

import time

import pytest
from redis import exceptions as redis_exc
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregates import inconsistencies
from nexus.core.periods import day_of, period_of
from nexus.core.rollup import _APPLY, _Batch, read_aggregate, read_quarantine
from nexus.core.telemetry_store import TelemetryRecord, write_records
from nexus.worker.jobs import run_budget
from nexus.worker.metrics import AGGREGATE_INCONSISTENCIES, QUARANTINED
from tests.harness import settings_for


def rec(i: int, now: float, **kw) -> TelemetryRecord:
    fields = {"cost_usd": 0.01, "prompt_tokens": 5, "completion_tokens": 7, **kw}
    return TelemetryRecord(id=f"r{i}", ts=now, node="n", backend=f"b{i % 3}", model="m", **fields)


async def test_a_record_past_the_bounds_is_quarantined_and_the_rest_applied(redis: Redis) -> None:
    now = time.time()
    settings = settings_for([])
    before = QUARANTINED._value.get()
    await write_records(redis, [rec(i, now) for i in range(20)])
    await write_records(redis, [rec(99, now, completion_tokens=2**64 - 1)])  # was: ERR ... out of range
    for _ in range(3):  # the issue saw three ticks fail in a row; each now succeeds, and is idempotent
        result = await run_budget(redis, settings, now)
    agg = await read_aggregate(redis, period_of(now))
    assert agg.total.requests == 20 and agg.total.completion_tokens == 140
    assert inconsistencies(agg) == []
    assert sum(t.requests for t in agg.by_backend.values()) == 20
    assert result["inconsistent"] == {}
    count, [entry] = await read_quarantine(redis)
    assert count == 1 and entry["id"] == "r99" and "completion_tokens" in entry["reason"]
    assert str(2**64 - 1) in entry["record"]  # kept as written
    assert QUARANTINED._value.get() == before + 1
    assert not await redis.hexists(keys.telemetry_records(day_of(now)), "r99")
    # a replay of the bad record (a node retrying a flush) is not let back in
    assert await write_records(redis, [rec(99, now, completion_tokens=2**64 - 1)]) == 0


async def test_the_script_checks_every_increment_before_writing(redis: Redis) -> None:
    now = time.time()
    day = day_of(now)
    await write_records(redis, [rec(0, now), rec(1, now)])
    batch = _Batch(day, now)
    agg = batch.target(keys.telemetry_agg(period_of(now)), now + 3600)
    batch.records = [("r0", "", [(agg, "total.requests", 1)]), ("r1", "", [(agg, "total.requests", 2**64)])]
    with pytest.raises(redis_exc.ResponseError, match="bad increment"):
        await redis.eval(_APPLY, len(batch.keys), *batch.keys, *batch.argv())
    assert not await redis.exists(keys.telemetry_agg(period_of(now)))  # not even r0's increment
    assert await redis.hlen(keys.telemetry_records(day)) == 2


async def test_an_inconsistent_aggregate_is_reported_with_a_metric(redis: Redis) -> None:
    now = time.time()
    period = period_of(now)
    await write_records(redis, [rec(i, now) for i in range(5)])
    await run_budget(redis, settings_for([]), now)
    await redis.hincrby(keys.telemetry_agg(period), "total.requests", 1)  # as a half-applied script once left it
    before = AGGREGATE_INCONSISTENCIES.labels(period)._value.get()
    result = await run_budget(redis, settings_for([]), now)
    assert result["inconsistent"][period] == [
        "total.requests = 6 but the sum over backend is 5", "total.requests = 6 but the sum over model is 5"]
    assert AGGREGATE_INCONSISTENCIES.labels(period)._value.get() == before + 1
