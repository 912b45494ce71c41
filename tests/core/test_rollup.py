"""nexus.core.rollup and nexus.core.spend_report against a real Redis: exactly-once rollup (re-runs,
racing workers, replays after the rollup), sweeping old days into their own period, quality minutes,
live spend repair, the spend report."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregates import parse_aggregate, to_nano
from nexus.core.model import BudgetStatus
from nexus.core.periods import BudgetCalendar, PeriodRule, day_of, period_of
from nexus.core.rollup import (
    _apply,
    _build,
    read_aggregate,
    read_quality_minutes,
    read_quarantine,
    repair_live_spend,
    rollup_day,
    rollup_pending,
)
from nexus.core.snapshot import BudgetObservation
from nexus.core.spend_report import read_spend_report, write_budget_observations
from nexus.core.telemetry_store import TelemetryRecord, read_live_spend, write_records
from tests.clock import next_day_start
from tests.stored import sum_increments


def _today_at_half_past_noon() -> float:
    """12:30:15 UTC of the real current day: Redis expires keys by its own clock, so every timestamp here is
    relative to the real now (never a pinned date), and records spread over 10 minutes stay in one day."""
    now = time.time()
    return now - now % 86400 + 12 * 3600 + 30 * 60 + 15


NOW = _today_at_half_past_noon()
DAY = day_of(NOW)
PERIOD = period_of(NOW)


def mixed_records(n: int, ts: float = NOW, seed: int = 1) -> list[TelemetryRecord]:
    """A scripted mix: three backends, models with colons, two keys, failed attempts, errors, costs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        attempt = i % 9 == 4
        outcome = "upstream_error" if attempt else rng.choice(["ok", "ok", "ok", "http_500", "client_disconnected"])
        out.append(
            TelemetryRecord(
                id=f"req{i:04d}" + (":0" if attempt else ""),
                ts=ts - rng.uniform(0, 600),
                node="n1",
                backend=rng.choice(["gpu", "cloud", "edge"]),
                model=rng.choice(["llama3:8b", "gpt-4o"]),
                key=rng.choice([None, "team-a", "team-b"]),
                prompt_tokens=rng.randrange(1000),
                completion_tokens=rng.randrange(1000),
                cost_usd=0.0 if attempt else rng.uniform(0, 0.01),
                ttfb_ms=None if attempt else rng.uniform(5, 500),
                outcome=outcome,
                status={"upstream_error": 502, "http_500": 500}.get(outcome, 200),
            )
        )
    return out


async def agg_fields(redis: Redis, period: str = PERIOD) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(keys.telemetry_agg(period))).items()}


async def test_rollup_folds_every_record_exactly_once(redis: Redis) -> None:
    records = mixed_records(50)
    assert await write_records(redis, records) == 50
    result = await rollup_pending(redis, NOW, batch_size=7)
    assert (result.seen, result.applied, result.quarantined, result.days) == (50, 50, 0, (DAY,))
    assert result.batches >= 8
    assert await agg_fields(redis) == sum_increments(records)
    assert await redis.hlen(keys.telemetry_records(DAY)) == 0
    assert await redis.scard(keys.telemetry_rolled(DAY)) == 50

    again = await rollup_pending(redis, NOW, batch_size=7)
    assert (again.seen, again.applied) == (0, 0)
    assert await agg_fields(redis) == sum_increments(records)


async def test_a_replay_after_the_rollup_is_not_counted_again(redis: Redis) -> None:
    records = mixed_records(20)
    await write_records(redis, records)
    live = await read_live_spend(redis, PERIOD)
    await rollup_pending(redis, NOW)
    # A router node that lost the reply to its flush replays the batch after the worker rolled it up.
    assert await write_records(redis, records) == 0
    assert await read_live_spend(redis, PERIOD) == live
    assert (await rollup_pending(redis, NOW)).applied == 0
    assert await agg_fields(redis) == sum_increments(records)


async def test_racing_rollups_count_each_record_once(redis: Redis) -> None:
    records = mixed_records(300)
    await write_records(redis, records)
    results = await asyncio.gather(*(rollup_pending(redis, NOW, batch_size=5) for _ in range(4)))
    assert sum(r.applied for r in results) == 300
    assert await agg_fields(redis) == sum_increments(records)
    total = parse_aggregate(await redis.hgetall(keys.telemetry_agg(PERIOD))).total
    assert total.nusd == sum(to_nano(r.cost_usd) for r in records)
    assert total.usd == pytest.approx(sum(r.cost_usd for r in records))


async def test_old_days_are_swept_into_their_own_period(redis: Redis) -> None:
    now = next_day_start(15) + 300  # reset day 15: a new period began 5 min ago
    late = mixed_records(10, ts=now - 3600, seed=2)  # the 14th: still the period that began last month
    old = mixed_records(10, ts=now - 10 * 86400 + 3600, seed=3)  # the 5th
    fresh = mixed_records(5, ts=now, seed=4)
    fresh = [r.model_copy(update={"ts": now + 1, "id": "f" + r.id}) for r in fresh]
    cal = BudgetCalendar(PeriodRule(15))
    await write_records(redis, late + old + fresh, cal)
    result = await rollup_pending(redis, now, calendar=cal)
    assert result.days == (day_of(now - 10 * 86400), day_of(now - 86400), day_of(now))
    assert day_of(now).endswith("-15")
    previous, current = period_of(now - 3600, 15), period_of(now, 15)
    assert previous != current
    assert await agg_fields(redis, previous) == sum_increments(late + old)
    assert await agg_fields(redis, current) == sum_increments(fresh)


async def test_malformed_records_are_quarantined_uncounted(redis: Redis) -> None:
    await write_records(redis, mixed_records(3))
    await redis.hset(keys.telemetry_records(DAY), "junk", b"{not json")
    result = await rollup_day(redis, DAY, now=NOW)
    assert (result.applied, result.quarantined) == (3, 1)
    assert (await read_aggregate(redis, PERIOD)).total.requests == 3
    assert not await redis.exists(keys.telemetry_records(DAY))
    count, [entry] = await read_quarantine(redis)
    assert count == 1 and entry["id"] == "junk" and entry["record"] == "{not json"
    assert "not a telemetry record" in entry["reason"]


async def test_quality_minutes_and_expiries(redis: Redis) -> None:
    minute = NOW - NOW % 60
    records = [
        TelemetryRecord(id="a", ts=minute + 1, node="n", backend="gpu", model="m", ttfb_ms=10.0),
        TelemetryRecord(id="b", ts=minute + 2, node="n", backend="gpu", model="m", ttfb_ms=30.0),
        TelemetryRecord(id="c", ts=minute - 60, node="n", backend="gpu", model="m", outcome="upstream_error"),
        TelemetryRecord(id="d", ts=minute - 2 * 86400, node="n", backend="gpu", model="m"),
    ]
    await write_records(redis, records)
    await rollup_pending(redis, NOW)
    minutes = await read_quality_minutes(redis, ["gpu", "idle"], NOW)
    assert minutes["idle"] == {}
    got = minutes["gpu"]
    assert set(got) == {minute, minute - 60}  # the 2-day-old record is spend-only
    assert (got[minute].requests, got[minute].ttfb_us, got[minute].ttfb_count) == (2, 40_000, 2)
    assert (got[minute - 60].requests, got[minute - 60].errors) == (1, 1)
    hour = datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%d%H")
    hour_start = NOW - NOW % 3600
    day_end = NOW - NOW % 86400 + 86400
    # Redis 6.2 has no EXPIRETIME: compare remaining TTLs with the expected expiry instants.
    expected = {
        keys.telemetry_quality("gpu", hour): hour_start + 26 * 3600,
        keys.telemetry_rolled(DAY): day_end + 2 * 86400,
        keys.telemetry_agg(PERIOD): NOW + 400 * 86400,  # the rollup's clock, not the wall clock
    }
    for key, at in expected.items():
        # EXPIREAT instants are absolute: compare with Redis's own clock (which may differ from ours)
        sec, usec = await redis.time()
        assert abs(await redis.pttl(key) / 1000 - (at - (sec + usec / 1e6))) < 5, key


async def test_repair_live_spend_only_raises_lower_counters(redis: Redis) -> None:
    await redis.hset(keys.telemetry_spend(PERIOD), mapping={"global": "5.0", "team-a": "1.0"})
    raised = await repair_live_spend(redis, PERIOD, {"global": 4.0, "team-a": 2.5, "team-b": 0.5})
    assert sorted(raised) == ["team-a", "team-b"]
    assert await read_live_spend(redis, PERIOD) == {"global": 5.0, "team-a": 2.5, "team-b": 0.5}
    assert await repair_live_spend(redis, PERIOD, {"global": 5.0 + 1e-9}) == []


async def test_spend_report(redis: Redis) -> None:
    records = mixed_records(40)
    await write_records(redis, records)
    await rollup_pending(redis, NOW)
    obs = {
        "global": BudgetObservation(1.0, PERIOD, BudgetStatus.SOFT_LIMIT, 1.2, 0.75, 0.83, NOW),
        "team-a": BudgetObservation(0.1, period_of(NOW - 40 * 86400), BudgetStatus.NORMAL, 5.0, 0.75, 0.02, NOW),
    }
    await write_budget_observations(redis, obs)
    report = await read_spend_report(redis, PERIOD)
    finals = [r for r in records if ":" not in r.id]
    expected_total: Any = pytest.approx(sum(r.cost_usd for r in records))
    assert report["total_usd"] == expected_total
    assert report["requests"] == len(finals)
    assert report["failed_attempts"] == len(records) - len(finals)
    assert report["errors"] == sum(1 for r in finals if r.outcome == "http_500")
    assert set(report["by_backend"]) == {"gpu", "cloud", "edge"}
    assert set(report["by_model"]) == {"llama3:8b", "gpt-4o"}
    assert set(report["by_key"]) == {"team-a", "team-b"}
    assert sum(b["usd"] for b in report["by_backend"].values()) == expected_total
    assert report["by_key"]["team-a"]["usd"] == pytest.approx(sum(r.cost_usd for r in records if r.key == "team-a"))
    assert report["live_spend"]["global"] == expected_total
    assert list(report["budgets"]) == ["global"]  # team-a's observation is of another period
    assert report["budgets"]["global"]["status"] == "soft_limit"

    # the period of team-a's observation had no traffic: an empty report that still shows that observation
    old = await read_spend_report(redis, period_of(NOW - 40 * 86400))
    assert (old["total_usd"], old["requests"], old["by_backend"], old["by_key"]) == (0.0, 0, {}, {})
    assert list(old["budgets"]) == ["team-a"]
    assert old["budgets"]["team-a"]["spend_usd"] == 0.1


async def test_a_key_with_its_own_reset_day_counts_in_its_own_period(redis: Redis) -> None:
    """Global periods start on the 1st, team-a's on the 15th: a record of the 14th counts for the global
    budget in this month's period and for team-a in the one that began on last month's 15th."""
    now = next_day_start(15) - 86400 + 3600  # 01:00 UTC on the 14th
    cal = BudgetCalendar(PeriodRule(1), {"team-a": PeriodRule(15)})
    records = [r.model_copy(update={"key": "team-a"}) for r in mixed_records(12, ts=now, seed=5)]
    await write_records(redis, records, cal)
    await rollup_pending(redis, now, calendar=cal)
    global_period, key_period = period_of(now, 1), period_of(now, 15)
    assert global_period != key_period  # on the 14th, the 15th-based period began last month
    expected = sum_increments(records)
    assert await agg_fields(redis, global_period) == {k: v for k, v in expected.items() if not k.startswith("key.")}
    assert await agg_fields(redis, key_period) == {k: v for k, v in expected.items() if k.startswith("key.")}
    cost = sum(r.cost_usd for r in records)
    assert await read_live_spend(redis, global_period) == {"global": pytest.approx(cost)}
    assert await read_live_spend(redis, key_period) == {"team-a": pytest.approx(cost)}



async def _hincrby_calls(redis: Redis) -> int:
    return int((await redis.info("commandstats")).get("cmdstat_hincrby", {}).get("calls", 0))


async def _pending(redis: Redis) -> list[tuple[str, bytes]]:
    return sorted((k.decode(), v) for k, v in (await redis.hgetall(keys.telemetry_records(DAY))).items())


async def test_a_whole_batch_is_folded_in_with_one_increment_per_field(redis: Redis) -> None:
    records = mixed_records(200)
    await write_records(redis, records)
    await redis.config_resetstat()
    result = await rollup_pending(redis, NOW, batch_size=200)
    assert (result.applied, result.batches) == (200, 1)
    fields = await agg_fields(redis)
    assert fields == sum_increments(records)
    hour = datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%d%H")  # the records span the 10 min before NOW
    quality = sum([await redis.hlen(keys.telemetry_quality(b, hour)) for b in ("gpu", "cloud", "edge")])
    # one HINCRBY per field the batch touches (aggregate and quality minutes), not one per record and field
    assert await _hincrby_calls(redis) == len(fields) + quality


async def test_a_batch_a_racing_worker_took_part_of_goes_record_by_record(redis: Redis) -> None:
    records = mixed_records(30)
    await write_records(redis, records)
    items = await _pending(redis)
    whole, _ = _build(DAY, items, NOW, BudgetCalendar())
    part, _ = _build(DAY, items[:10], NOW, BudgetCalendar())
    assert await _apply(redis, part) == (10, 0)  # another worker folds in a third of them first
    # the whole batch cannot go merged any more (10 records are gone): record by record, only the other 20
    assert await _apply(redis, whole) == (20, 0)
    assert await agg_fields(redis) == sum_increments(records)
    assert await _apply(redis, whole) == (0, 0)
    assert await redis.hlen(keys.telemetry_records(DAY)) == 0
