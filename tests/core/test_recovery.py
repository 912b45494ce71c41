"""Data-loss detection and restoration, the pure verdict and the Redis scripts (issue 12, finding 4)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import BudgetConfig, DesiredConfig, RoutingConfig
from nexus.core.recovery import Verdict, judge, read_restored, restore_desired, restore_spend
from nexus.core.state import read_desired, seed_desired, update_desired
from nexus.core.telemetry_store import read_live_spend


@pytest.mark.parametrize(
    ("store", "held", "verdict"),
    [
        pytest.param((0, None), (None, None), Verdict.OK, id="nothing-held-empty-store"),
        pytest.param((3, "e1"), (None, None), Verdict.OK, id="nothing-held"),
        pytest.param((0, None), (7, "e1"), Verdict.LOST, id="store-empty"),
        pytest.param((5, "e1"), (7, "e1"), Verdict.LOST, id="version-went-backwards"),
        pytest.param((1, "e2"), (7, "e1"), Verdict.LOST, id="reset-and-reseeded"),
        pytest.param((7, "e1"), (7, "e1"), Verdict.OK, id="same"),
        pytest.param((8, "e1"), (7, "e1"), Verdict.OK, id="later"),
        pytest.param((7, "e2"), (7, "e1"), Verdict.ADOPT, id="restored-by-a-peer"),
        pytest.param((9, None), (7, None), Verdict.OK, id="store-of-an-older-release"),
    ],
)
def test_judge(store, held, verdict):
    assert judge(*store, *held) is verdict


def desired(limit: float) -> DesiredConfig:
    return DesiredConfig(routing=RoutingConfig(budget=BudgetConfig(monthly_limit_usd=limit)))


async def test_the_freshest_restore_wins_and_nothing_goes_backwards(redis: Redis):
    assert await restore_desired(redis, desired(5.0), 4)  # an empty store: restored at the node's version
    assert not await restore_desired(redis, desired(3.0), 3)  # a staler node does not overwrite it
    assert not await restore_desired(redis, desired(3.0), 4)  # nor one at the same version
    assert await restore_desired(redis, desired(9.0), 6)  # a fresher one does
    version, got = await read_desired(redis)
    assert (version, got.routing.budget.monthly_limit_usd) == (6, 9.0)
    assert await redis.get(keys.CONFIG_EPOCH)
    assert await update_desired(redis, lambda d: desired(1.0), "budget.put") == 7  # and versions go on from there


async def test_admin_writes_to_an_unseeded_store_are_refused(redis: Redis):
    from nexus.core.errors import StateUnavailable

    with pytest.raises(StateUnavailable, match="no desired state"):
        await update_desired(redis, lambda d: desired(1.0), "budget.put")
    assert await seed_desired(redis, desired(2.0))
    assert await update_desired(redis, lambda d: desired(1.0), "budget.put") == 2


async def test_lost_spend_is_put_back_once_at_the_largest_floor(redis: Redis):
    period = "2026-11"
    spend = keys.telemetry_spend(period)
    await redis.hset(spend, "global", "3.0")  # recorded since the loss
    assert await restore_spend(redis, {("global", period): 20.0}) == [("global", period)]
    assert await restore_spend(redis, {("global", period): 20.0}) == []  # a second node, same floor: nothing
    assert await restore_spend(redis, {("global", period): 22.0}) == [("global", period)]  # a fresher read: +2
    assert await restore_spend(redis, {("global", period): 21.0}) == []
    assert (await read_live_spend(redis, period))["global"] == pytest.approx(25.0)
    at, restored = await read_restored(redis, period)
    assert at is not None and restored == {"global": 22.0}


async def test_spend_that_was_not_lost_is_never_raised(redis: Redis):
    period = "2026-11"
    await redis.hset(keys.telemetry_spend(period), "global", "30.0")
    assert await restore_spend(redis, {("global", period): 29.5}) == []  # a node's slightly older read
    assert (await read_live_spend(redis, period))["global"] == 30.0
    assert (await read_restored(redis, period))[0] is None
