"""nexus.core.telemetry_store's batches, nexus.core.aggregate_store and nexus.core.spend_report against a real
Redis: a batch adds what its records add one by one, exactly once (replays, racing sends), each record in its
own period, quality minutes and expiries, the quarantine, live spend repair, the spend report."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from redis import exceptions as redis_exc
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.aggregate_store import read_aggregate, read_quality_minutes, read_quarantine, repair_live_spend
from nexus.core.aggregates import parse_aggregate, to_nano
from nexus.core.model import BudgetStatus
from nexus.core.periods import BudgetCalendar, PeriodRule, day_of, period_of
from nexus.core.snapshot import BudgetObservation
from nexus.core.spend_report import read_spend_report, write_budget_observations
from nexus.core.telemetry_store import (
    _WRITE,
    TelemetryBatch,
    TelemetryRecord,
    read_live_spend,
    record_scopes,
    write_batch,
)
from tests.clock import next_day_start
from tests.stored import put_records, sum_increments


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


def _batch(records: list[TelemetryRecord], seq: int = 1, writer: str = "node-a:1", at: float = NOW) -> TelemetryBatch:
    return TelemetryBatch(writer, seq, tuple(records), at)


def _spend_of(records: list[TelemetryRecord]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in records:
        for scope in record_scopes(r):
            out[scope] = out.get(scope, 0.0) + r.cost_usd
    return out


async def test_a_batch_adds_what_its_records_add_one_by_one(redis: Redis) -> None:
    records = mixed_records(50)
    written = await write_batch(redis, _batch(records))
    assert written.applied and written.quarantined == ()
    assert await agg_fields(redis) == sum_increments(records)
    live = await read_live_spend(redis, PERIOD)
    assert live == {scope: pytest.approx(usd) for scope, usd in _spend_of(records).items()}
    total = parse_aggregate(await redis.hgetall(keys.telemetry_agg(PERIOD))).total
    assert total.nusd == sum(to_nano(r.cost_usd) for r in records)
    assert (await read_aggregate(redis, PERIOD)).total.requests == sum(1 for r in records if ":" not in r.id)


async def test_a_replayed_batch_is_not_counted_again(redis: Redis) -> None:
    records = mixed_records(20)
    first = _batch(records, seq=1)
    assert (await write_batch(redis, first)).applied
    live, fields = await read_live_spend(redis, PERIOD), await agg_fields(redis)
    # the node lost the reply and sends the batch again; then an older one arrives late: neither counts
    assert not (await write_batch(redis, first)).applied
    second = _batch(mixed_records(5, seed=9), seq=2)
    assert (await write_batch(redis, second)).applied
    assert not (await write_batch(redis, first)).applied
    assert await agg_fields(redis) == sum_increments(records + list(second.records))
    assert await read_live_spend(redis, PERIOD) != live
    assert not (await write_batch(redis, second)).applied
    assert fields != await agg_fields(redis)


async def test_each_writer_counts_its_own_batches(redis: Redis) -> None:
    a, b = mixed_records(10, seed=1), mixed_records(10, seed=2)
    assert (await write_batch(redis, _batch(a, seq=7, writer="node-a:1"))).applied
    assert (await write_batch(redis, _batch(b, seq=1, writer="node-b:1"))).applied  # numbers are per writer
    assert (await write_batch(redis, _batch(b, seq=1, writer="node-a:2"))).applied  # node-a restarted: new writer
    assert await agg_fields(redis) == sum_increments(a + b + b)
    assert int(await redis.get(keys.telemetry_writer("node-a:1"))) == 7


async def test_racing_sends_of_one_batch_count_it_once(redis: Redis) -> None:
    records = mixed_records(300)
    batch = _batch(records)
    results = await asyncio.gather(*(write_batch(redis, batch) for _ in range(4)))
    assert sum(r.applied for r in results) == 1
    assert await agg_fields(redis) == sum_increments(records)


async def test_records_count_in_their_own_period(redis: Redis) -> None:
    now = next_day_start(15) + 300  # reset day 15: a new period began 5 min ago
    late = mixed_records(10, ts=now - 3600, seed=2)  # the 14th: still the period that began last month
    old = mixed_records(10, ts=now - 10 * 86400 + 3600, seed=3)  # the 5th
    fresh = mixed_records(5, ts=now, seed=4)
    fresh = [r.model_copy(update={"ts": now + 1, "id": "f" + r.id}) for r in fresh]
    cal = BudgetCalendar(PeriodRule(15))
    await put_records(redis, late + old + fresh, cal, at=now)
    assert day_of(now).endswith("-15")
    previous, current = period_of(now - 3600, 15), period_of(now, 15)
    assert previous != current
    assert await agg_fields(redis, previous) == sum_increments(late + old)
    assert await agg_fields(redis, current) == sum_increments(fresh)
    assert (await read_live_spend(redis, previous))["global"] == pytest.approx(sum(r.cost_usd for r in late + old))


async def test_a_record_past_the_bounds_is_quarantined_its_cost_still_spent(redis: Redis) -> None:
    good = mixed_records(3)
    bad = TelemetryRecord(id="huge", ts=NOW, node="n", backend="gpu", model="m", completion_tokens=2**64 - 1,
                          cost_usd=0.5)
    written = await write_batch(redis, _batch([*good, bad]))
    assert [rid for rid, _ in written.quarantined] == ["huge"]
    assert "completion_tokens" in written.quarantined[0][1]
    assert await agg_fields(redis) == sum_increments(good)  # counted: the others only
    assert (await read_live_spend(redis, PERIOD))["global"] == pytest.approx(0.5 + sum(r.cost_usd for r in good))
    count, [entry] = await read_quarantine(redis)
    assert count == 1 and entry["id"] == "huge" and "completion_tokens" in entry["reason"]
    assert str(2**64 - 1) in entry["record"]  # kept as written
    assert not (await write_batch(redis, _batch([*good, bad]))).applied  # a replay brings nothing back


async def test_the_script_checks_every_increment_before_writing(redis: Redis) -> None:
    agg = keys.telemetry_agg(PERIOD)
    writer = keys.telemetry_writer("w")
    argv = [1, 60, 2, 0, 0, 0, 0, 3, "total.requests", 1, 3, "total.prompt_tokens", 2**64]
    with pytest.raises(redis_exc.ResponseError, match="bad increment"):
        await redis.eval(_WRITE, 3, writer, keys.TELEMETRY_QUARANTINE, agg, *argv)
    assert not await redis.exists(agg) and not await redis.exists(writer)  # not even the first increment


async def test_an_amount_that_is_not_a_number_refuses_the_batch_before_any_write(redis: Redis) -> None:
    spend = keys.telemetry_spend(PERIOD)
    writer = keys.telemetry_writer("w")
    argv = [1, 60, 0, 2, 0, 0, 0, 3, "global", "0.5", 3, "k1", "inf"]
    with pytest.raises(redis_exc.ResponseError, match="bad amount"):
        await redis.eval(_WRITE, 3, writer, keys.TELEMETRY_QUARANTINE, spend, *argv)
    # nothing written, the mark included: the batch can be sent again once fixed, not lost half-applied
    assert not await redis.exists(spend) and not await redis.exists(writer)


async def test_an_absurd_cost_is_charged_at_the_bound_and_sums_stay_finite(redis: Redis) -> None:
    bad = [TelemetryRecord(id=f"x{i}", ts=NOW, node="n", backend="gpu", model="m", cost_usd=1e308) for i in range(3)]
    written = await write_batch(redis, _batch(bad))
    assert written.applied and len(written.quarantined) == 3  # cost_usd is outside its bounds
    assert (await read_live_spend(redis, PERIOD))["global"] == pytest.approx(3 * 10_000.0)


async def test_quality_minutes_and_expiries(redis: Redis) -> None:
    minute = NOW - NOW % 60
    records = [
        TelemetryRecord(id="a", ts=minute + 1, node="n", backend="gpu", model="m", ttfb_ms=10.0),
        TelemetryRecord(id="b", ts=minute + 2, node="n", backend="gpu", model="m", ttfb_ms=30.0),
        TelemetryRecord(id="c", ts=minute - 60, node="n", backend="gpu", model="m", outcome="upstream_error"),
        TelemetryRecord(id="d", ts=minute - 2 * 86400, node="n", backend="gpu", model="m", cost_usd=0.1),
    ]
    await put_records(redis, records, writer="q", at=NOW)
    minutes = await read_quality_minutes(redis, ["gpu", "idle"], NOW)
    assert minutes["idle"] == {}
    got = minutes["gpu"]
    assert set(got) == {minute, minute - 60}  # the 2-day-old record is spend-only
    assert (got[minute].requests, got[minute].ttfb_us, got[minute].ttfb_count) == (2, 40_000, 2)
    assert (got[minute - 60].requests, got[minute - 60].errors) == (1, 1)
    hour = datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%d%H")
    hour_start = NOW - NOW % 3600
    expected = {
        keys.telemetry_quality("gpu", hour): hour_start + 26 * 3600,
        keys.telemetry_agg(PERIOD): NOW + 400 * 86400,  # the batch's clock, not the wall clock
        keys.telemetry_spend(period_of(minute - 2 * 86400)): minute - 2 * 86400 + 40 * 86400,
    }
    sec, usec = await redis.time()
    for key, at in expected.items():
        # EXPIREAT instants are absolute: compare with Redis's own clock (which may differ from ours)
        assert abs(await redis.pttl(key) / 1000 - (at - (sec + usec / 1e6))) < 5, key
    assert abs(await redis.ttl(keys.telemetry_writer("q")) - keys.TELEMETRY_WRITER_TTL_SECONDS) < 5


async def _calls(redis: Redis, command: str) -> int:
    return int((await redis.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_batch_costs_one_write_per_field_not_per_record(redis: Redis) -> None:
    records = mixed_records(200)
    await redis.config_resetstat()
    await write_batch(redis, _batch(records))
    fields = await agg_fields(redis)
    assert fields == sum_increments(records)
    hour = datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%d%H")  # the records span the 10 min before NOW
    quality = sum([await redis.hlen(keys.telemetry_quality(b, hour)) for b in ("gpu", "cloud", "edge")])
    assert await _calls(redis, "hincrby") == len(fields) + quality
    assert await _calls(redis, "hincrbyfloat") == 3  # live spend of global, team-a, team-b
    assert await _calls(redis, "hsetnx") == await _calls(redis, "sadd") == 0  # no per-record writes


async def test_repair_live_spend_only_raises_lower_counters(redis: Redis) -> None:
    await redis.hset(keys.telemetry_spend(PERIOD), mapping={"global": "5.0", "team-a": "1.0"})
    raised = await repair_live_spend(redis, PERIOD, {"global": 4.0, "team-a": 2.5, "team-b": 0.5})
    assert sorted(raised) == ["team-a", "team-b"]
    assert await read_live_spend(redis, PERIOD) == {"global": 5.0, "team-a": 2.5, "team-b": 0.5}
    assert await repair_live_spend(redis, PERIOD, {"global": 5.0 + 1e-9}) == []


async def test_spend_report(redis: Redis) -> None:
    records = mixed_records(40)
    await put_records(redis, records, at=NOW)
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
    await put_records(redis, records, cal, at=now)
    global_period, key_period = period_of(now, 1), period_of(now, 15)
    assert global_period != key_period  # on the 14th, the 15th-based period began last month
    expected = sum_increments(records)
    assert await agg_fields(redis, global_period) == {k: v for k, v in expected.items() if not k.startswith("key.")}
    assert await agg_fields(redis, key_period) == {k: v for k, v in expected.items() if k.startswith("key.")}
    cost = sum(r.cost_usd for r in records)
    assert await read_live_spend(redis, global_period) == {"global": pytest.approx(cost)}
    assert await read_live_spend(redis, key_period) == {"team-a": pytest.approx(cost)}

