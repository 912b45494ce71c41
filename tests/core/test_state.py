"""nexus.core.state against a real Redis: round trips, atomic seeding, versioned writes and events,
validation before writing, no lost concurrent updates, observed state, load gauges, error wrapping."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from nexus.core import keys, state
from nexus.core.config import (
    BackendConfig,
    BudgetConfig,
    DesiredConfig,
    ModelConfig,
    NexusSettings,
    RoutingConfig,
    load_settings,
)
from nexus.core.errors import ConfigError, StateError, StateUnavailable
from nexus.core.model import HealthState, QualityStats
from nexus.core.periods import period_of
from nexus.core.snapshot import BudgetObservation, HealthObservation, Observed
from nexus.core.spend_report import write_budget_observations
from nexus.worker.store import replace_quality
from tests.stored import put_health

NEXUS_TOML = """
[server]
port = 9000

[[backends]]
name = "gpu-box"
url = "http://10.0.0.5:8000/"
type = "vllm"
tier = 3
max_concurrency = 16
models = ["llama3:70b", { name = "llava:13b", vision = true, context_length = 4096, tools = false }]

[[backends]]
name = "laptop"
url = "http://127.0.0.1:11434"
type = "Ollama"
zone = "OPEN"
priority = 2
models = ["mistral:7b"]

[[backends]]
name = "openai"
url = "https://api.openai.com/v1"
type = "openai"
tier = 5
priority = 10
api_key_env = "OPENAI_API_KEY"
models = [{ name = "gpt-4o", input_usd_per_1m = 2.5, output_usd_per_1m = 10.0, context_length = 128000 }, "gpt-4o-mini"]

[[backends]]
name = "claude"
url = "https://api.anthropic.com"
type = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"
timeout_seconds = 30
models = ["claude-3-5-sonnet"]

[routing]
strategy = "priority_only"
max_retries = 3

[routing.aliases]
"gpt-4" = "gpt-4o"
"fast" = "small"
"small" = "mistral:7b"

[routing.fallbacks]
"llama3:70b" = ["mistral:7b", "gpt-4o-mini"]

[routing.weights]
priority = 40
load = 40
latency = 20

[[routing.policies]]
model_pattern = "llama*"
privacy = "restricted"
min_tier = 2

[[routing.policies]]
model_pattern = "gpt-*"
max_cost_per_request = 0.5
fallback_allowed = false

[routing.budget]
monthly_limit_usd = 100
soft_limit_percent = 80
hard_limit_action = "block_cloud"
reset_day = 5

[routing.key_budgets.team-a]
monthly_limit_usd = 10
soft_limit_percent = 0.5

[health_check]
interval_seconds = 5
"""

NOW = 1_750_000_000.0  # only ever passed to pure code (the snapshot's now): no Redis expiry depends on it
PERIOD = period_of(NOW, 5)  # reset_day = 5 below


@pytest.fixture
def settings(tmp_path: Path) -> NexusSettings:
    path = tmp_path / "nexus.toml"
    path.write_text(NEXUS_TOML, encoding="utf-8")
    return load_settings(path, environ={"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"})


def _sorted(desired: DesiredConfig) -> DesiredConfig:
    return desired.model_copy(update={"backends": sorted(desired.backends, key=lambda b: b.name)})


def _backend(name: str, **extra: object) -> BackendConfig:
    return BackendConfig(name=name, url=f"http://{name}.local:8000", type="ollama", models=["m"], **extra)


async def test_round_trip_toml_seed_snapshot(redis: Redis, settings: NexusSettings) -> None:
    assert await state.seed_desired(redis, settings.desired()) is True
    observed = Observed(
        health={
            "gpu-box": HealthObservation(
                HealthState.HEALTHY, NOW - 1, (ModelConfig(name="qwen:7b", context_length=8192),), 12.5
            ),
            "laptop": HealthObservation(HealthState.LOADING, NOW - 2),
        },
        quality={"openai": QualityStats(error_rate_1h=0.1, avg_ttfb_ms_1h=350.0, requests_1h=40, requests_24h=900)},
        spend={"global": BudgetObservation(81.25, PERIOD), "team-a": BudgetObservation(2.0, PERIOD)},
        inflight={"gpu-box": 5, "openai": 1},
    )
    for name, obs in observed.health.items():
        await put_health(redis, name, obs)
    await replace_quality(redis, observed.quality)
    await write_budget_observations(redis, observed.spend)
    await state.write_inflight(redis, "node-a", {"gpu-box": 3, "openai": 1})
    await state.write_inflight(redis, "node-b", {"gpu-box": 2})

    version, desired = await state.read_desired(redis)
    assert version == 1
    assert desired == _sorted(settings.desired())
    assert await state.read_observed(redis) == observed

    snapshot = await state.load_snapshot(redis, settings, NOW)
    # Expectations written out from the TOML and the observations above (not by building a snapshot: the
    # code under test must not be its own oracle).
    assert (snapshot.version, snapshot.built_at, snapshot.strategy.value, snapshot.max_retries) == (
        1, NOW, "priority_only", 3)
    assert (snapshot.weights.priority, snapshot.weights.load, snapshot.weights.latency) == (40, 40, 20)
    assert set(snapshot.backends) == {"gpu-box", "laptop", "openai", "claude"}
    b = snapshot.backends
    assert {n: (x.health, x.zone.value, x.tier, x.priority, x.is_local) for n, x in b.items()} == {
        "gpu-box": (HealthState.HEALTHY, "restricted", 3, 1, True),
        "laptop": (HealthState.LOADING, "open", 1, 2, True),  # explicit zone wins over the type's default
        "openai": (HealthState.UNKNOWN, "open", 5, 10, False),  # never probed: unknown
        "claude": (HealthState.UNKNOWN, "open", 1, 1, False),
    }
    assert b["gpu-box"].url == "http://10.0.0.5:8000" and b["gpu-box"].max_concurrency == 16
    assert b["gpu-box"].latency_ema_ms == 12.5 and b["laptop"].latency_ema_ms is None
    assert sorted(b["gpu-box"].models) == ["llama3:70b", "llava:13b", "qwen:7b"]  # qwen discovered by the probe
    llava = b["gpu-box"].models["llava:13b"]
    assert (llava.vision, llava.tools, llava.context_length) == (True, False, 4096)
    assert b["gpu-box"].models["qwen:7b"].context_length == 8192
    assert b["openai"].quality == QualityStats(error_rate_1h=0.1, avg_ttfb_ms_1h=350.0, requests_1h=40,
                                                 requests_24h=900)
    assert b["claude"].timeout_seconds == 30
    assert snapshot.price("openai", "gpt-4o") == (2.5, 10.0) and snapshot.price("gpu-box", "llama3:70b") == (0, 0)
    assert [x.name for x in snapshot.by_model["mistral:7b"]] == ["laptop"]
    assert [x.name for x in snapshot.by_model["qwen:7b"]] == ["gpu-box"]
    assert snapshot.policy_by_model["llama3:70b"].model_pattern == "llama*"
    assert snapshot.policy_by_model["gpt-4o-mini"].fallback_allowed is False
    assert snapshot.policy_by_model["mistral:7b"] is None
    team = snapshot.budgets["team-a"]
    assert (team.monthly_limit_usd, team.soft_limit_fraction, team.spend_usd, team.period) == (10, 0.5, 2.0, PERIOD)
    assert team.rule.reset_day == 5  # a key budget without its own reset day follows the global one
    assert snapshot.backends["gpu-box"].health is HealthState.HEALTHY
    assert "qwen:7b" in snapshot.backends["gpu-box"].models
    assert snapshot.aliases["fast"] == "small"
    assert snapshot.fallbacks["llama3:70b"] == ("mistral:7b", "gpt-4o-mini")
    assert [p.model_pattern for p in snapshot.policies] == ["llama*", "gpt-*"]
    assert snapshot.budgets["global"].soft_limit_fraction == 0.8
    assert snapshot.budgets["global"].spend_usd == 81.25
    assert snapshot.budgets["team-a"].monthly_limit_usd == 10
    assert snapshot.inflight == {"gpu-box": 5, "openai": 1}


async def test_seed_only_once(redis: Redis, settings: NexusSettings) -> None:
    assert await state.read_desired(redis) == (0, DesiredConfig())
    assert await state.seed_desired(redis, settings.desired()) is True
    assert await state.seed_desired(redis, DesiredConfig(backends=[_backend("other")])) is False
    version, desired = await state.read_desired(redis)
    assert version == 1
    assert desired == _sorted(settings.desired())


async def test_concurrent_seeders_exactly_one_wins(redis: Redis, settings: NexusSettings) -> None:
    candidates = [DesiredConfig(backends=[_backend(f"b{i}")]) for i in range(4)]
    results = await asyncio.gather(*(state.seed_desired(redis, c) for c in candidates))
    assert results.count(True) == 1
    version, desired = await state.read_desired(redis)
    assert version == 1
    assert desired == candidates[results.index(True)]


async def test_seeding_an_empty_config_marks_the_store_seeded(redis: Redis) -> None:
    assert await state.seed_desired(redis, DesiredConfig()) is True
    assert await state.seed_desired(redis, DesiredConfig(backends=[_backend("late")])) is False
    assert await state.read_desired(redis) == (1, DesiredConfig())


async def test_write_bumps_version_and_publishes_event(redis: Redis, settings: NexusSettings) -> None:
    await state.seed_desired(redis, settings.desired())
    async with await state.subscribe_changes(redis) as events:
        assert await state.put_backend(redis, _backend("new-box")) == 2
        event = await events.get(timeout=10)
        assert event is not None
        assert (event.version, event.kind) == (2, "backend.put")

        # A write that changes nothing stores and publishes nothing: the next event is the next real change.
        assert await state.put_backend(redis, _backend("new-box")) == 2
        routing = settings.routing.model_copy(update={"max_retries": 0})
        assert await state.put_routing(redis, routing) == 3
        event = await events.get(timeout=10)
        assert event is not None
        assert (event.version, event.kind) == (3, "routing.put")

        assert await state.delete_backend(redis, "laptop") == 4
        assert await state.delete_backend(redis, "laptop") is None
        assert await state.write_desired(redis, DesiredConfig(), "replace") == 5
        seen = [await events.get(timeout=10), await events.get(timeout=10)]
        assert [(e.version, e.kind) for e in seen if e] == [(4, "backend.delete"), (5, "replace")]

    version, desired = await state.read_desired(redis)
    assert (version, desired) == (5, DesiredConfig())


async def test_invalid_writes_change_nothing(redis: Redis, settings: NexusSettings) -> None:
    await state.seed_desired(redis, settings.desired())
    before = await state.read_desired(redis)

    cycle = RoutingConfig.model_construct(aliases={"a": "b", "b": "c", "c": "a"})
    with pytest.raises(ConfigError, match="alias cycle"):
        await state.put_routing(redis, cycle)
    bad_backend = BackendConfig.model_construct(name="bad", url="ftp://nowhere", tier=9)
    with pytest.raises(ConfigError, match="tier"):
        await state.put_backend(redis, bad_backend)
    twice = DesiredConfig.model_construct(backends=[_backend("dup"), _backend("dup")], routing=RoutingConfig())
    with pytest.raises(ConfigError, match="used twice"):
        await state.write_desired(redis, twice, "replace")
    bad_budget = settings.routing.model_copy(update={"budget": BudgetConfig.model_construct(reset_day=31)})
    with pytest.raises(ConfigError, match="reset_day"):
        await state.put_routing(redis, bad_budget)

    assert await state.read_desired(redis) == before


async def test_concurrent_put_backend_loses_nothing(redis: Redis, settings: NexusSettings) -> None:
    await state.seed_desired(redis, DesiredConfig())
    versions = await asyncio.gather(*(state.put_backend(redis, _backend(f"node-{i:02d}")) for i in range(20)))
    assert sorted(versions) == list(range(2, 22))
    version, desired = await state.read_desired(redis)
    assert version == 1 + 20
    assert [b.name for b in desired.backends] == [f"node-{i:02d}" for i in range(20)]


async def test_concurrent_read_modify_writes_of_routing_both_land(redis: Redis, settings: NexusSettings) -> None:
    await state.seed_desired(redis, settings.desired())

    def set_budget(current: DesiredConfig) -> DesiredConfig:
        budget = current.routing.budget.model_copy(update={"monthly_limit_usd": 7.0})
        return current.model_copy(update={"routing": current.routing.model_copy(update={"budget": budget})})

    def add_alias(current: DesiredConfig) -> DesiredConfig:
        aliases = {**current.routing.aliases, "big": "llama3:70b"}
        return current.model_copy(update={"routing": current.routing.model_copy(update={"aliases": aliases})})

    await asyncio.gather(
        state.update_desired(redis, set_budget, "budget.put"), state.update_desired(redis, add_alias, "alias.put")
    )
    version, desired = await state.read_desired(redis)
    assert version == 3
    assert desired.routing.budget.monthly_limit_usd == 7.0
    assert desired.routing.aliases["big"] == "llama3:70b"


async def test_stale_health_reads_back_unknown(redis: Redis, settings: NexusSettings) -> None:
    await state.seed_desired(redis, settings.desired())
    interval = settings.health_check.interval_seconds
    fresh = HealthObservation(HealthState.UNHEALTHY, NOW - interval, (), 80.0)
    stale = HealthObservation(HealthState.HEALTHY, NOW - 2 * interval - 0.001, (), 5.0)
    await put_health(redis, "gpu-box", fresh, consecutive_failures=3)
    await put_health(redis, "laptop", stale, consecutive_successes=9)

    snapshot = await state.load_snapshot(redis, settings, NOW)
    assert snapshot.backends["gpu-box"].health is HealthState.UNHEALTHY
    assert snapshot.backends["gpu-box"].latency_ema_ms == 80.0
    assert snapshot.backends["laptop"].health is HealthState.UNKNOWN
    assert snapshot.backends["laptop"].latency_ema_ms is None
    assert snapshot.backends["openai"].health is HealthState.UNKNOWN

    records = await state.read_health(redis)
    assert records["gpu-box"].consecutive_failures == 3
    assert records["laptop"].consecutive_successes == 9
    assert records["laptop"].observation() == stale


async def test_inflight_gauges_summed_and_expired_ones_dropped(redis: Redis) -> None:
    await state.write_inflight(redis, "node-a", {"gpu": 2, "cloud": 1})
    await state.write_inflight(redis, "node-b", {"gpu": 3, "cloud": 0})
    await state.write_inflight(redis, "node-dead", {"gpu": 100})
    await redis.delete(keys.inflight("node-dead"))
    assert await state.read_inflight(redis) == {"gpu": 5, "cloud": 1}

    await state.write_inflight(redis, "node-short", {"gpu": 50}, ttl_seconds=0.05)
    deadline = time.monotonic() + 10
    while (counts := await state.read_inflight(redis)) != {"gpu": 5, "cloud": 1}:
        assert counts == {"gpu": 55, "cloud": 1}
        assert time.monotonic() < deadline, "the short-TTL gauge never expired"
        await asyncio.sleep(0.01)

    # A node that rewrites its gauge replaces its counts; an all-zero gauge counts nothing.
    await state.write_inflight(redis, "node-b", {"gpu": 0})
    assert (await state.read_observed(redis)).inflight == {"gpu": 2, "cloud": 1}


async def test_malformed_values_raise_state_error(redis: Redis) -> None:
    await redis.hset(keys.CONFIG_BACKENDS, "x", b"{not json")
    with pytest.raises(StateError, match="x"):
        await state.read_desired(redis)
    await redis.flushall()
    await redis.hset(keys.OBSERVED_HEALTH, "gpu", b'{"state": "on fire", "checked_at": 1}')
    with pytest.raises(StateError, match="health"):
        await state.read_observed(redis)


async def test_unreachable_redis_raises_state_unavailable(settings: NexusSettings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Redis(host="127.0.0.1", port=port, socket_connect_timeout=2)
    try:
        with pytest.raises(StateUnavailable) as caught:
            await state.read_desired(client)
        assert isinstance(caught.value.__cause__, RedisConnectionError)
        with pytest.raises(StateUnavailable):
            await state.put_backend(client, _backend("x"))
        with pytest.raises(StateUnavailable):
            await state.load_snapshot(client, settings, NOW)
        with pytest.raises(StateUnavailable):
            await state.subscribe_changes(client)
    finally:
        await client.aclose()


async def test_decoding_client_is_accepted(redis_server, redis: Redis, settings: NexusSettings) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await state.seed_desired(client, settings.desired()) is True
        await state.write_inflight(client, "node-a", {"gpu-box": 1})
        snapshot = await state.load_snapshot(client, settings, NOW)
        assert snapshot == await state.load_snapshot(redis, settings, NOW)
        assert snapshot.inflight == {"gpu-box": 1}
    finally:
        await client.aclose()
