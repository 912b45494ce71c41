"""Test helpers that put state into Redis, or read it back, the way production code does.

Production has one writer per key (see docs/state.md#keys); tests that need a given observed state use
that writer through these helpers instead of a second, test-only writer in the product.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import asdict

from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregates import record_increments
from nexus.core.observed import HealthRecord, decode_hash
from nexus.core.periods import BudgetCalendar
from nexus.core.snapshot import HealthObservation
from nexus.core.telemetry_store import TelemetryBatch, TelemetryRecord, Written, write_batch
from nexus.worker.store import compare_and_set, health_change

__all__ = ["put_health", "put_records", "read_ticks", "sum_increments"]

_SEQ = itertools.count(1)


async def put_health(
    redis: Redis,
    name: str,
    observation: HealthObservation,
    *,
    consecutive_failures: int = 0,
    consecutive_successes: int = 0,
) -> None:
    """Store one backend's health record through the health worker's compare-and-set writer."""
    counters = {"consecutive_failures": consecutive_failures, "consecutive_successes": consecutive_successes}
    record = HealthRecord(**asdict(observation), **counters)
    expected = await redis.hget(keys.OBSERVED_HEALTH, name)
    written = await compare_and_set(redis, keys.OBSERVED_HEALTH, [health_change(name, expected, record)])
    assert written, f"health of {name} changed while the test wrote it"


async def put_records(
    redis: Redis,
    records: Iterable[TelemetryRecord],
    calendar: BudgetCalendar | None = None,
    *,
    writer: str = "tests",
    at: float | None = None,
) -> Written:
    """Write `records` as one router node's flush does: one batch of `writer`, numbered after every earlier one
    (`at`, the batch's time, defaults to now)."""
    batch = TelemetryBatch(writer, next(_SEQ), tuple(records), time.time() if at is None else at)
    return await write_batch(redis, batch, calendar)


async def read_ticks(redis: Redis, job: str, day: str) -> dict[int, int]:
    """Tick (unix ms) -> runs of `job` on UTC day `day`: the audit trail of "each tick ran once"."""
    reply = await redis.hgetall(keys.worker_ticks(job, day))
    return {int(tick): int(n) for tick, n in decode_hash(reply).items()}


def sum_increments(records: Iterable[TelemetryRecord]) -> dict[str, int]:
    """The aggregate fields `records` add up to: the reference the rollup's Redis hash must equal."""
    total: dict[str, int] = {}
    for rec in records:
        for name, n in record_increments(rec).items():
            total[name] = total.get(name, 0) + n
    return total
