"""Budget leases against the real Redis: atomic grants, release by the telemetry write, returns."""

import asyncio
import time

import pytest

from nexus.core.periods import BudgetCalendar, PeriodRule, period_of
from nexus.core.reservations import read_reserved, reserve, return_lease, settle_node
from nexus.core.telemetry_store import TelemetryBatch, TelemetryRecord, read_live_spend, write_batch
from tests.stored import put_records

NOW = time.time()
PERIOD = period_of(NOW)


def record(rid: str, cost: float, reserved: float, node: str = "n1", key: str | None = None) -> TelemetryRecord:
    return TelemetryRecord(
        id=rid,
        ts=NOW,
        node=node,
        backend="cloud",
        model="m",
        cost_usd=cost,
        key=key,
        reserved_usd=reserved,
        reserved_periods={scope: PERIOD for scope in ("global", key) if scope} if reserved else {},
    )


def limits(*pairs: tuple[str, float], period: str = PERIOD) -> list[tuple[str, float, str]]:
    return [(scope, limit, period) for scope, limit in pairs]


async def test_concurrent_grants_never_exceed_the_limit(redis):
    # 200 nodes' requests of $0.07 racing for a $10 limit: exactly 142 fit
    grants = await asyncio.gather(
        *(reserve(redis, f"n{i % 4}", 0.07, 0.07, limits(("global", 10.0))) for i in range(200))
    )
    assert sum(g.ok for g in grants) == 142
    assert sum((await read_reserved(redis, PERIOD)).values()) == pytest.approx(142 * 0.07)
    refused = next(g for g in grants if not g.ok)
    assert refused.scope == "global" and refused.committed + 0.07 > 10.0


async def test_a_grant_is_capped_by_the_room_left_but_never_below_the_need(redis):
    await put_records(redis, [record("a", 9.5, 0.0)])
    assert (await reserve(redis, "n1", 5.0, 0.1, limits(("global", 10.0)))).amount == pytest.approx(0.5)
    assert not (await reserve(redis, "n2", 1.0, 0.01, limits(("global", 10.0)))).ok  # all leased out
    await return_lease(redis, "n1", 0.3, [("global", PERIOD)])
    assert (await reserve(redis, "n2", 1.0, 0.01, limits(("global", 10.0)))).amount == pytest.approx(0.3)


async def test_record_write_releases_its_share_of_the_lease_exactly_once(redis):
    assert (await reserve(redis, "n1", 1.0, 0.5, limits(("global", 10.0), ("team", 2.0)))).amount == 1.0
    rec = record("r1", 0.3, 0.5, key="team")
    batch = TelemetryBatch("n1:test", 1, (rec,), NOW)
    assert (await write_batch(redis, batch)).applied
    assert await read_reserved(redis, PERIOD) == {"global": 0.5, "team": 0.5}
    assert (await read_live_spend(redis, PERIOD))["global"] == pytest.approx(0.3)
    assert not (await write_batch(redis, batch)).applied  # a replay neither releases nor spends again
    assert await read_reserved(redis, PERIOD) == {"global": 0.5, "team": 0.5}
    assert (await read_live_spend(redis, PERIOD))["team"] == pytest.approx(0.3)


async def test_key_scope_limit_refuses_independently(redis):
    scoped = limits(("global", 100.0), ("team", 1.0))
    assert (await reserve(redis, "n1", 0.6, 0.6, scoped)).ok
    refused = await reserve(redis, "n1", 0.6, 0.6, scoped)
    assert not refused.ok and refused.scope == "team"
    assert (await reserve(redis, "n1", 0.6, 0.6, limits(("global", 100.0)))).ok


async def test_gone_node_leases_are_released(redis):
    await reserve(redis, "dead", 3.0, 3.0, limits(("global", 10.0)))
    await reserve(redis, "alive", 2.0, 2.0, limits(("global", 10.0)))
    assert await settle_node(redis, [PERIOD], "dead") == {}  # it reported nothing admitted: nothing to charge
    assert await read_reserved(redis, PERIOD) == {"global": 2.0}


async def test_each_scope_leases_and_spends_in_its_own_period(redis):
    """A key budget with its own reset day: its lease and spend live in its own period's hashes, so the
    global period's room does not depend on the key's, and a record releases each lease where it was taken."""
    key_period = "key-own-period"
    scoped = [("global", 10.0, PERIOD), ("team", 1.0, key_period)]
    assert (await reserve(redis, "n1", 0.6, 0.6, scoped)).ok
    assert await read_reserved(redis, PERIOD) == {"global": 0.6}
    assert await read_reserved(redis, key_period) == {"team": 0.6}
    # the key's period is full, the global one is not: refused for the key only
    refused = await reserve(redis, "n2", 0.6, 0.6, scoped)
    assert (refused.ok, refused.scope) == (False, "team")
    assert (await reserve(redis, "n2", 0.6, 0.6, [("global", 10.0, PERIOD)])).ok

    rec = record("r1", 0.5, 0.6, key="team")
    rec = rec.model_copy(update={"reserved_periods": {"global": PERIOD, "team": key_period}})
    calendar = BudgetCalendar(PeriodRule(), {"team": PeriodRule(seconds=10**9, anchor=0)})
    assert (await put_records(redis, [rec], calendar)).applied
    assert await read_reserved(redis, PERIOD) == {"global": pytest.approx(0.6)}  # n2's lease is left
    assert await read_reserved(redis, key_period) == {}
    assert await read_live_spend(redis, PERIOD) == {"global": pytest.approx(0.5)}
    assert await read_live_spend(redis, calendar.period("team", NOW)) == {"team": pytest.approx(0.5)}
    await return_lease(redis, "n2", 0.6, [("global", PERIOD)])
    assert await read_reserved(redis, PERIOD) == {}
