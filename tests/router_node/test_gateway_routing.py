"""Acceptance tests of the gateway's routing behaviour (docs/architecture.md#a-request, docs/http-contract.md).

Everything runs over real HTTP on 127.0.0.1 against real Redis: fake OpenAI-compatible backends, an
in-process gateway, clients from the official `openai` SDK (what users run) and aiohttp (for raw
headers and SSE bytes). Observed state (health, quality, spend) is written to Redis the way workers
and router nodes write it in production, and each test waits, with a deadline, until the gateway's
snapshot shows it. No fixed sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from redis.asyncio import Redis

from nexus.core.config import BackendConfig, RoutingConfig
from nexus.core.model import BudgetStatus, HealthState, QualityStats
from nexus.core.periods import PeriodRule
from nexus.core.reservations import read_reserved
from nexus.core.snapshot import GLOBAL_SCOPE, HealthObservation
from nexus.core.state import put_backend, put_routing
from nexus.core.telemetry_store import TelemetryRecord
from nexus.worker.store import replace_quality
from tests.clock import knobs_for, steady_period
from tests.harness import GatewayHarness, eventually
from tests.router_node.conftest import backend_for
from tests.stored import put_health, put_records

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
RESTRICTED = {"policies": [{"model_pattern": "m*", "privacy": "restricted"}]}
ALL_RECONCILERS = [
    "RequestAnalyzer",
    "TenantReconciler",
    "PrivacyReconciler",
    "BudgetReconciler",
    "TierReconciler",
    "QualityReconciler",
    "CircuitReconciler",
    "SchedulerReconciler",
]
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=15)


# -- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    """`sdk(gw, api_key=...)` -> an `openai.AsyncOpenAI` on the gateway, closed after the test."""
    clients: list[openai.AsyncOpenAI] = []

    def make(gw: GatewayHarness, api_key: str = "unused") -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=api_key, max_retries=0, timeout=15)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def post(
    http: aiohttp.ClientSession,
    gw: GatewayHarness,
    body: Any = CHAT,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> tuple[int, Any, Any]:
    """(status, headers, decoded JSON body or raw bytes) of one POST."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(gw.url + path, data=data, headers=hdrs, timeout=CLIENT_TIMEOUT) as resp:
        raw = await resp.read()
        try:
            payload: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = raw
        return resp.status, resp.headers, payload


# Budget tests run in one [testing] budget period that began an hour ago and lasts 31 days, so a real month
# end passing mid-test cannot reset the spend they build up (tests/clock.py).
STEADY = {"testing": knobs_for(steady_period())}


async def add_spend(redis: Redis, usd: float, gw: GatewayHarness) -> None:
    """Spend as production records it: a router node's batch of one telemetry record with a cost, in the budget
    period `gw` counts in."""
    record = TelemetryRecord(
        id=uuid.uuid4().hex, ts=time.time(), node="test-seeder", backend="cloud", backend_type="cloud",
        model="m", requested_model="m", cost_usd=usd,
    )
    settings = gw.node.settings
    assert (await put_records(redis, [record], settings.routing.calendar(settings.testing))).applied


def budget_status(gw: GatewayHarness) -> BudgetStatus | None:
    snap = gw.node.snapshot
    return snap.budgets[GLOBAL_SCOPE].status() if snap is not None else None


def closed_port() -> int:
    """A loopback port nothing listens on: bound, read, closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cloud_backend(fake: Any, **extra: Any) -> dict[str, Any]:
    """An `openai`-type (open zone) backend on a fake; its key comes from TEST_KEY (settings_for sets it)."""
    return backend_for(fake, type="openai", api_key_env="TEST_KEY", **extra)


def assert_rejection(status: int, body: Any, groups: set[str], available: set[str]) -> dict[str, Any]:
    """A 503 rejection with the full, grouped context; returns the context."""
    assert status == 503, body
    assert body["error"]["type"] == "service_unavailable"
    assert body["error"]["code"] == "no_viable_backend"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    ctx = body["context"]
    reasons = ctx["rejection_reasons"]
    assert {r["reconciler"] for r in reasons} == groups
    grouped = ctx["reasons_by_reconciler"]
    assert set(grouped) == groups
    assert sorted(orjson.dumps(r) for g in grouped.values() for r in g) == sorted(orjson.dumps(r) for r in reasons)
    for name, items in grouped.items():
        assert all(r["reconciler"] == name and r["reason"] and r["suggested_action"] for r in items)
    assert ctx["suggested_action"] in {r["suggested_action"] for r in reasons}
    assert set(ctx["available_backends"]) == available
    for r in reasons:  # every exclusion is named in the human-readable message too
        assert r["agent_id"] in body["error"]["message"]
    return ctx


# -- 1. privacy ------------------------------------------------------------------------------------------


async def test_restricted_policy_never_reaches_cloud_under_load_and_failover(
    fakes, gateways, http, redis, sdk, monkeypatch
):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")  # the gateway reads the cloud key from its environment
    flaky = await fakes("local-flaky", error_rate=0.5, seed=7)
    steady = await fakes("local-steady")
    cloud = await fakes("cloud", api_key="sk-test-secret")
    gw = await gateways(
        [
            backend_for(flaky, priority=1),
            backend_for(steady, priority=2),
            cloud_backend(cloud, priority=0),  # the best priority: it would win without the policy
        ],
        routing=RESTRICTED,
    )
    reasons: list[str] = []
    served: list[str] = []
    request_ids: set[str] = set()
    for _ in range(20):  # 1,000 requests, 50 at a time: above the locals' max_concurrency (8), so many queue
        results = await asyncio.gather(*(post(http, gw) for _ in range(50)))
        for status, headers, body in results:
            assert status == 200, body
            assert headers["X-Nexus-Privacy-Zone"] == "restricted"
            assert headers["X-Nexus-Backend-Type"] == "local"
            reasons.append(headers["X-Nexus-Route-Reason"])
            served.append(headers["X-Nexus-Backend"])
            request_ids.add(headers["X-Nexus-Request-Id"])
    assert len(request_ids) == 1000  # every answer is its own request (none replayed, none shared)
    assert cloud.requests == []  # the cloud's own log: not one request reached it
    assert set(served) <= {"local-flaky", "local-steady"}
    failovers = reasons.count("failover")
    assert failovers > 0  # local-flaky failed about half its attempts, and the retries stayed local
    assert all(s == "local-steady" for s, r in zip(served, reasons, strict=True) if r == "failover")
    # every failed attempt was retried exactly once, on the other local backend
    assert len(flaky.requests) + len(steady.requests) == 1000 + failovers

    # the SDK sees the same: routed locally
    raw = await sdk(gw).chat.completions.with_raw_response.create(**CHAT)
    assert raw.headers["x-nexus-privacy-zone"] == "restricted"
    assert cloud.requests == []

    # control: drop the policy live, and the cloud (best priority) wins: the test above was meaningful
    await put_routing(redis, RoutingConfig())
    await eventually(lambda: gw.node.snapshot.policy_for("m") is None)
    status, headers, body = await post(http, gw)
    assert status == 200, body
    assert headers["X-Nexus-Backend"] == "cloud"
    assert headers["X-Nexus-Privacy-Zone"] == "open"
    assert len(cloud.requests) == 1
    assert cloud.requests[0]["headers"]["authorization"] == "Bearer sk-test-secret"


# -- 2. rejections ---------------------------------------------------------------------------------------


async def test_privacy_only_rejection(fakes, gateways, http):
    c1, c2 = await fakes("cloud-a"), await fakes("cloud-b")
    gw = await gateways([backend_for(c1, type="generic"), cloud_backend(c2)], routing=RESTRICTED)
    status, _, body = await post(http, gw)
    ctx = assert_rejection(status, body, {"PrivacyReconciler"}, {"cloud-a", "cloud-b"})
    assert ctx["privacy_zone_required"] == "restricted"
    assert {r["agent_id"] for r in ctx["rejection_reasons"]} == {"cloud-a", "cloud-b"}
    assert "restricted" in ctx["suggested_action"]
    assert "required_tier" not in ctx
    assert ctx["budget_status"] == "normal"
    assert c1.requests == [] and c2.requests == []


async def test_tier_only_rejection(fakes, gateways, sdk):
    t1, t2 = await fakes("tier1"), await fakes("tier2")
    gw = await gateways(
        [backend_for(t1, tier=1), backend_for(t2, tier=2)],
        routing={"policies": [{"model_pattern": "m", "min_tier": 4}]},
    )
    with pytest.raises(openai.APIStatusError) as err:
        await sdk(gw).chat.completions.create(**CHAT)
    assert err.value.status_code == 503
    body = err.value.response.json()
    ctx = assert_rejection(503, body, {"TierReconciler"}, {"tier1", "tier2"})
    assert ctx["required_tier"] == 4
    assert "X-Nexus-Flexible" in ctx["suggested_action"]
    assert "privacy_zone_required" not in ctx


async def test_budget_only_rejection(fakes, gateways, http, redis):
    local, cloud = await fakes("local"), await fakes("cloud")
    gw = await gateways(
        [backend_for(local), cloud_backend(cloud)],
        routing={"budget": {"monthly_limit_usd": 10.0, "hard_limit_action": "block_all"}},
        **STEADY,
    )
    await add_spend(redis, 12.5, gw)
    await eventually(lambda: budget_status(gw) is BudgetStatus.HARD_LIMIT)
    status, headers, body = await post(http, gw)
    ctx = assert_rejection(status, body, {"BudgetReconciler"}, {"local", "cloud"})
    assert ctx["budget_status"] == "hard_limit"
    assert all("block_all" in r["reason"] for r in ctx["rejection_reasons"])
    assert "monthly_limit_usd" in ctx["suggested_action"]
    assert "Retry-After" not in headers  # waiting does not lift a budget block within the period
    assert local.requests == [] and cloud.requests == []


async def test_mixed_rejection_names_every_reconciler(fakes, gateways, http, redis):
    names = ["down", "open-cloud", "pricey", "low-tier", "flaky"]
    fs = {n: await fakes(n) for n in names}
    now = time.time()
    await put_health(redis, "down", HealthObservation(HealthState.UNHEALTHY, now))
    await replace_quality(redis, {"flaky": QualityStats(error_rate_1h=0.9, requests_1h=100, requests_24h=100)})
    priced = [{"name": "m", "input_usd_per_1m": 10.0, "output_usd_per_1m": 30.0}]
    gw = await gateways(
        [
            backend_for(fs["down"], tier=3),  # RequestAnalyzer: unhealthy
            backend_for(fs["open-cloud"], type="generic", tier=5),  # PrivacyReconciler: open zone
            cloud_backend(fs["pricey"], zone="restricted", tier=5, models=priced),  # BudgetReconciler: cost cap
            backend_for(fs["low-tier"], tier=1),  # TierReconciler: below min_tier
            backend_for(fs["flaky"], tier=3),  # QualityReconciler: 1h error rate
        ],
        routing={
            "policies": [
                {"model_pattern": "m", "privacy": "restricted", "min_tier": 3, "max_cost_per_request": 0.000001}
            ]
        },
    )
    expected = {
        "down": "RequestAnalyzer",
        "open-cloud": "PrivacyReconciler",
        "pricey": "BudgetReconciler",
        "low-tier": "TierReconciler",
        "flaky": "QualityReconciler",
    }
    await eventually(lambda: gw.node.snapshot.failing == frozenset({"flaky"}))
    status, headers, body = await post(http, gw)
    ctx = assert_rejection(status, body, set(expected.values()), set(names) - {"down"})
    assert {r["agent_id"]: r["reconciler"] for r in ctx["rejection_reasons"]} == expected
    assert ctx["privacy_zone_required"] == "restricted"
    assert ctx["required_tier"] == 3
    assert ctx["budget_status"] == "normal"
    # the most actionable suggestion: a request header (tier) beats waiting, changing config or budget
    assert "X-Nexus-Flexible" in ctx["suggested_action"]
    # an unhealthy/failing backend may recover: waiting helps, so the client is told when to retry
    assert int(headers["Retry-After"]) >= 1
    assert ctx["retry_after_seconds"] > 0
    assert all(f.requests == [] for f in fs.values())


# -- 3. failover -----------------------------------------------------------------------------------------


async def test_failover_on_500_and_on_refused_connection(fakes, gateways, sdk):
    broken = await fakes("broken", fail_mode="500")
    healthy = await fakes("healthy")
    gw = await gateways(
        [
            backend_for(broken, priority=0),
            {"name": "refusing", "url": f"http://127.0.0.1:{closed_port()}", "type": "vllm", "models": ["m"],
             "priority": 1},
            backend_for(healthy, priority=5),
        ],
        routing={"max_retries": 2},
    )
    raw = await sdk(gw).chat.completions.with_raw_response.create(**CHAT)
    assert raw.status_code == 200
    assert raw.headers["x-nexus-backend"] == "healthy"
    assert raw.headers["x-nexus-route-reason"] == "failover"
    assert raw.parse().choices[0].message.content == "echo: hello there"
    assert len(broken.requests) == 1  # tried once, failed with 500
    assert len(healthy.requests) == 1


async def test_failover_from_refused_connection_alone(fakes, gateways, http):
    healthy = await fakes("healthy")
    gw = await gateways(
        [
            {"name": "refusing", "url": f"http://127.0.0.1:{closed_port()}", "type": "vllm", "models": ["m"],
             "priority": 0},
            backend_for(healthy, priority=5),
        ]
    )
    status, headers, body = await post(http, gw)
    assert status == 200, body
    assert headers["X-Nexus-Backend"] == "healthy"
    assert headers["X-Nexus-Route-Reason"] == "failover"


async def test_failover_never_leaves_the_privacy_constraint(fakes, gateways, http):
    local = await fakes("local", fail_mode="500")
    cloud = await fakes("cloud")
    gw = await gateways([backend_for(local, priority=5), cloud_backend(cloud, priority=0)], routing=RESTRICTED)
    status, _, body = await post(http, gw)
    assert status == 502, body
    assert body["error"]["code"] == "upstream_failed"
    assert "local" in body["error"]["message"]
    assert len(local.requests) == 1
    assert cloud.requests == []


async def test_all_candidates_failing_is_502(fakes, gateways, sdk):
    a = await fakes("a", fail_mode="500")
    b = await fakes("b", fail_mode="close")
    gw = await gateways([backend_for(a, priority=0), backend_for(b, priority=1)])
    with pytest.raises(openai.APIStatusError) as err:
        await sdk(gw).chat.completions.create(**CHAT)
    assert err.value.status_code == 502
    body = err.value.response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "upstream_error"
    assert body["error"]["code"] == "upstream_failed"
    assert body["error"]["param"] is None
    assert "a (" in body["error"]["message"] and "b (" in body["error"]["message"]
    assert err.value.response.headers["x-nexus-request-id"]
    assert len(a.requests) == 1 and len(b.requests) == 1


async def test_upstream_timeout_is_504(fakes, gateways, http):
    slow = await fakes("slow", latency_ms=3000)
    gw = await gateways([backend_for(slow)], server={"request_timeout_seconds": 0.5})
    status, _, body = await post(http, gw)  # a reply after 3 s would be a 200: this is the gateway's timeout
    assert status == 504, body
    assert body["error"]["code"] == "upstream_timeout"
    assert body["error"]["type"] == "upstream_error"
    assert len(slow.requests) == 1


# -- 4. mid-stream failure -------------------------------------------------------------------------------


async def test_midstream_failure_ends_stream_with_error_event(fakes, gateways, http, sdk):
    fake = await fakes("breaks", fail_mode="midstream", stream_chunks=6, midstream_after_chunks=3, chunk_delay_ms=5)
    gw = await gateways([backend_for(fake)])
    async with http.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True},
                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()  # returns: the gateway ends the response, it does not hang
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert all(e.startswith(b"data: ") for e in events), raw
    payloads = [orjson.loads(e[6:]) for e in events]
    *chunks, last = payloads
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert content  # the first chunks reached the client
    assert "error" not in str(chunks)
    assert last["error"]["code"] == "upstream_stream_error"
    assert last["error"]["type"] == "upstream_error"
    assert b"[DONE]" not in raw

    # the SDK gets the first chunks, then raises on the error event instead of hanging
    pieces: list[str] = []
    stream = await sdk(gw).chat.completions.create(**CHAT, stream=True)
    with pytest.raises(openai.APIError) as err:
        async with asyncio.timeout(10):
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == content
    assert "mid-stream" in err.value.message
    assert len(fake.requests) == 2


# -- 5. budget -------------------------------------------------------------------------------------------


BUDGET = {"budget": {"monthly_limit_usd": 10.0, "soft_limit_percent": 0.75, "hard_limit_action": "block_cloud"}}


async def test_budget_soft_then_hard_limit(fakes, gateways, http, redis, sdk):
    local, cloud = await fakes("local"), await fakes("cloud")
    gw = await gateways([backend_for(local, priority=5), cloud_backend(cloud, priority=0)], routing=BUDGET, **STEADY)
    client = sdk(gw)

    raw = await client.chat.completions.with_raw_response.create(**CHAT)
    assert raw.headers["x-nexus-backend"] == "cloud"  # normal: the better priority wins
    assert raw.headers["x-nexus-budget-status"] == "normal"
    assert "x-nexus-budget-utilization" not in raw.headers
    assert "x-nexus-budget-remaining" not in raw.headers

    await add_spend(redis, 8.0, gw)  # 80%: over the soft limit (75%), under the hard one
    await eventually(lambda: budget_status(gw) is BudgetStatus.SOFT_LIMIT)
    raw = await client.chat.completions.with_raw_response.create(**CHAT)
    assert raw.headers["x-nexus-backend"] == "local"  # local preferred though the cloud scores higher
    assert raw.headers["x-nexus-route-reason"] == "budget_prefer_local"
    assert raw.headers["x-nexus-budget-status"] == "soft_limit"
    assert 0.8 <= float(raw.headers["x-nexus-budget-utilization"]) < 0.81
    assert 1.99 < float(raw.headers["x-nexus-budget-remaining"]) <= 2.0
    # soft limit is a preference, not an exclusion: with the local one failing, the cloud still serves
    local.configure(fail_mode="500")
    status, headers, body = await post(http, gw)
    assert status == 200, body
    assert headers["X-Nexus-Backend"] == "cloud"
    assert headers["X-Nexus-Route-Reason"] == "failover"
    local.configure(fail_mode="none")

    await add_spend(redis, 2.5, gw)  # past the limit
    await eventually(lambda: budget_status(gw) is BudgetStatus.HARD_LIMIT)
    cloud_seen = len(cloud.requests)
    status, headers, body = await post(http, gw, headers={"X-Nexus-Explain": "true"})
    assert status == 200, body
    assert headers["X-Nexus-Backend"] == "local"
    assert headers["X-Nexus-Budget-Status"] == "hard_limit"
    assert float(headers["X-Nexus-Budget-Utilization"]) >= 1.0
    assert float(headers["X-Nexus-Budget-Remaining"]) == 0.0
    budget_step = next(s for s in body["nexus_explain"]["steps"] if s["reconciler"] == "BudgetReconciler")
    assert [e["agent_id"] for e in budget_step["excluded"]] == ["cloud"]
    # block_cloud excludes the cloud from failover too
    local.configure(fail_mode="500")
    status, _, body = await post(http, gw)
    assert status == 502, body
    assert len(cloud.requests) == cloud_seen


async def test_budget_block_cloud_with_only_cloud_is_503(fakes, gateways, http, redis):
    cloud = await fakes("cloud")
    gw = await gateways([cloud_backend(cloud)], routing=BUDGET, **STEADY)
    await add_spend(redis, 10.0, gw)  # exactly the limit: hard
    await eventually(lambda: budget_status(gw) is BudgetStatus.HARD_LIMIT)
    status, _, body = await post(http, gw)
    ctx = assert_rejection(status, body, {"BudgetReconciler"}, {"cloud"})
    assert ctx["budget_status"] == "hard_limit"
    assert "block_cloud" in ctx["rejection_reasons"][0]["reason"]
    assert "budget hard limit" in body["error"]["message"]
    assert cloud.requests == []


# -- 6. fallback chains ----------------------------------------------------------------------------------


async def _unhealthy(redis: Redis, *names: str) -> None:
    for name in names:
        await put_health(redis, name, HealthObservation(HealthState.UNHEALTHY, time.time()))


async def test_fallback_serves_the_next_model(fakes, gateways, redis, sdk):
    big, small = await fakes("big-box", ("big",)), await fakes("small-box", ("small",))
    await _unhealthy(redis, "big-box")
    gw = await gateways([backend_for(big), backend_for(small)], routing={"fallbacks": {"big": ["small"]}})
    raw = await sdk(gw).chat.completions.with_raw_response.create(model="big", messages=CHAT["messages"])
    assert raw.headers["x-nexus-backend"] == "small-box"
    assert raw.headers["x-nexus-fallback-model"] == "small"
    assert raw.headers["x-nexus-route-reason"] == "fallback"
    assert raw.parse().model == "small"
    assert big.requests == []
    assert [r["model"] for r in small.requests] == ["small"]  # the backend was asked for the fallback model


async def test_fallback_keeps_the_original_privacy(fakes, gateways, redis, http):
    big = await fakes("big-box", ("big",))
    cloud_small = await fakes("cloud-small", ("small",))
    await _unhealthy(redis, "big-box")
    routing = {"fallbacks": {"big": ["small"]}, "policies": [{"model_pattern": "big", "privacy": "restricted"}]}
    gw = await gateways([backend_for(big), cloud_backend(cloud_small, priority=0)], routing=routing)
    status, headers, body = await post(http, gw, {**CHAT, "model": "big"})
    assert status == 503, body
    assert "X-Nexus-Fallback-Model" not in headers
    assert body["context"]["privacy_zone_required"] == "restricted"
    assert cloud_small.requests == []

    # a restricted backend for the fallback model serves it, though the cloud one has the better priority
    local_small = await fakes("local-small", ("small",))
    await put_backend(redis, BackendConfig(**backend_for(local_small, priority=9)))
    await eventually(lambda: "local-small" in gw.node.snapshot.backends)
    status, headers, body = await post(http, gw, {**CHAT, "model": "big"})
    assert status == 200, body
    assert headers["X-Nexus-Backend"] == "local-small"
    assert headers["X-Nexus-Fallback-Model"] == "small"
    assert headers["X-Nexus-Privacy-Zone"] == "restricted"
    assert cloud_small.requests == []


async def test_fallback_disallowed_by_policy(fakes, gateways, redis, http):
    big, small = await fakes("big-box", ("big",)), await fakes("small-box", ("small",))
    await _unhealthy(redis, "big-box")
    routing = {"fallbacks": {"big": ["small"]}, "policies": [{"model_pattern": "big", "fallback_allowed": False}]}
    gw = await gateways([backend_for(big), backend_for(small)], routing=routing)
    status, headers, body = await post(http, gw, {**CHAT, "model": "big"})
    assert_rejection(status, body, {"RequestAnalyzer"}, set())
    assert "X-Nexus-Fallback-Model" not in headers
    assert small.requests == [] and big.requests == []


# -- 7. explain ------------------------------------------------------------------------------------------


async def test_explain_json_and_stream(fakes, gateways, http, sdk):
    a, b, cloud = await fakes("a"), await fakes("b"), await fakes("cloud")
    policy = {"model_pattern": "m*", "privacy": "restricted", "min_tier": 1}
    gw = await gateways(
        [backend_for(a, priority=1), backend_for(b, priority=2), cloud_backend(cloud, priority=0)],
        routing={"policies": [policy]},
    )
    client = sdk(gw)
    raw = await client.chat.completions.with_raw_response.create(**CHAT, extra_headers={"X-Nexus-Explain": "true"})
    payload = orjson.loads(raw.content)
    assert payload["choices"][0]["message"]["content"] == "echo: hello there"
    ex = payload["nexus_explain"]
    assert [s["reconciler"] for s in ex["steps"]] == ALL_RECONCILERS
    privacy = ex["steps"][2]
    assert [e["agent_id"] for e in privacy["excluded"]] == ["cloud"]
    assert privacy["remaining"] == 2
    assert ex["matched_policy"]["model_pattern"] == "m*"
    assert ex["matched_policy"]["privacy"] == "restricted"
    assert ex["decision"] == "route"
    assert ex["backend"] == raw.headers["x-nexus-backend"] == "a"
    assert set(ex["scores"]) == {"a", "b"}
    assert ex["scores"]["a"] > ex["scores"]["b"]
    assert ex["alternatives"] == ["b"]
    assert ex["privacy_zone_required"] == "restricted"
    assert ex["budget_status"] == "normal"
    # without the header: no explanation in the body
    plain = await client.chat.completions.with_raw_response.create(**CHAT)
    assert "nexus_explain" not in orjson.loads(plain.content)

    async with http.post(f"{gw.url}/v1/chat/completions", json={**CHAT, "stream": True},
                         headers={"X-Nexus-Explain": "true"}, timeout=CLIENT_TIMEOUT) as resp:
        assert resp.status == 200
        backend = resp.headers["X-Nexus-Backend"]
        first = await resp.content.readline()
        rest = await resp.read()
    assert first.startswith(b": nexus-explain ")
    streamed = orjson.loads(first[len(b": nexus-explain "):])
    assert streamed["backend"] == backend
    assert [s["reconciler"] for s in streamed["steps"]] == ALL_RECONCILERS
    assert rest.rstrip().endswith(b"data: [DONE]")

    # the SDK ignores the comment line and parses the stream
    stream = await client.chat.completions.create(**CHAT, stream=True, extra_headers={"X-Nexus-Explain": "true"})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: hello there"
    assert cloud.requests == []


# -- 8. tiers --------------------------------------------------------------------------------------------


async def test_flexible_tier_downgrades_with_warning(fakes, gateways, http, sdk):
    t1, t2 = await fakes("tier1"), await fakes("tier2")
    gw = await gateways(
        [backend_for(t1, tier=1, priority=0), backend_for(t2, tier=2, priority=3)],
        routing={"policies": [{"model_pattern": "m", "min_tier": 3}]},
    )
    client = sdk(gw)
    raw = await client.chat.completions.with_raw_response.create(**CHAT, extra_headers={"X-Nexus-Flexible": "true"})
    assert raw.status_code == 200
    warning = raw.headers["x-nexus-warning"]
    assert "downgrade" in warning and "tier 3" in warning
    served = raw.headers["x-nexus-backend"]
    served_tier = {"tier1": 1, "tier2": 2}[served]
    assert f"routed to tier {served_tier}" in warning  # the warning names the tier that actually served

    with pytest.raises(openai.APIStatusError) as err:  # strict (the default): no downgrade
        await client.chat.completions.create(**CHAT)
    assert err.value.status_code == 503
    assert err.value.response.json()["context"]["required_tier"] == 3
    status, _, body = await post(http, gw, headers={"X-Nexus-Strict": "true"})
    assert status == 503 and body["context"]["required_tier"] == 3


# -- 9. queue --------------------------------------------------------------------------------------------


async def test_loading_best_candidate_queues_until_healthy(fakes, gateways, redis, sdk):
    loader, other = await fakes("loader"), await fakes("other")
    await put_health(redis, "loader", HealthObservation(HealthState.LOADING, time.time()))
    gw = await gateways([backend_for(loader, priority=0), backend_for(other, priority=5)])
    assert gw.node.snapshot.backends["loader"].health is HealthState.LOADING
    task = asyncio.create_task(sdk(gw).chat.completions.with_raw_response.create(**CHAT))
    await eventually(lambda: gw.node.queue.depth == 1 or task.done())
    assert not task.done()
    assert loader.requests == [] and other.requests == []  # waiting, not routed elsewhere
    await put_health(redis, "loader", HealthObservation(HealthState.HEALTHY, time.time()))
    raw = await asyncio.wait_for(task, 10)
    assert raw.status_code == 200
    assert raw.headers["x-nexus-backend"] == "loader"
    assert len(loader.requests) == 1 and other.requests == []
    assert gw.node.queue.depth == 0


async def test_queue_timeout_is_503_with_retry_after(fakes, gateways, redis, http):
    loader, other = await fakes("loader"), await fakes("other")
    await put_health(redis, "loader", HealthObservation(HealthState.LOADING, time.time()))
    gw = await gateways([backend_for(loader, priority=0), backend_for(other, priority=5)],
                        queue={"max_wait_seconds": 0.5})
    status, headers, body = await post(http, gw)
    assert status == 503, body
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["type"] == "service_unavailable"
    assert "loading" in body["error"]["message"]
    assert loader.requests == [] and other.requests == []
    assert gw.node.queue.depth == 0

    status, _, body = await post(http, gw, headers={"X-Nexus-Priority": "bogus"})
    assert status == 400
    assert body["error"]["param"] == "X-Nexus-Priority"
    assert body["error"]["type"] == "invalid_request_error"


# -- 10. API keys and body size --------------------------------------------------------------------------


async def test_api_keys_and_body_limit(fakes, gateways, http, sdk):
    fake = await fakes("local")
    digest = hashlib.sha256(b"sk-good").hexdigest()
    gw = await gateways([backend_for(fake)], server={"api_keys": [f"sha256:{digest}"], "max_body_bytes": 2048})

    status, _, body = await post(http, gw)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, _, body = await post(http, gw, headers={"Authorization": "Bearer sk-wrong"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        await sdk(gw, api_key="sk-wrong").chat.completions.create(**CHAT)
    assert fake.requests == []

    raw = await sdk(gw, api_key="sk-good").chat.completions.with_raw_response.create(**CHAT)
    assert raw.status_code == 200
    assert len(fake.requests) == 1
    assert "authorization" not in fake.requests[0]["headers"]  # the client's key is not forwarded

    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    status, _, body = await post(http, gw, big, headers={"Authorization": "Bearer sk-good"})
    assert status == 413 and body["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds on the bytes read
        data = orjson.dumps(big)
        for i in range(0, len(data), 512):
            yield data[i:i + 512]

    async with http.post(f"{gw.url}/v1/chat/completions", data=chunks(), timeout=CLIENT_TIMEOUT,
                         headers={"Authorization": "Bearer sk-good", "Content-Type": "application/json"}) as resp:
        assert resp.status == 413
    assert len(fake.requests) == 1


async def test_a_request_just_after_a_rollover_leases_in_the_new_period(fakes, gateways, http, redis):
    """The lease a request takes is of the period its record's spend counts in (its own timestamp's), even
    while the node's last read of the spend is still of the old period: a lease left in the old period's
    hashes would hide the request from the new period's hard limit (found by tests/e2e/test_rollover.py
    under load: 6 requests served under a limit of 5)."""
    cloud = await fakes("cloud", ("m",))
    rule = PeriodRule(seconds=3, anchor=int(time.time()))
    priced = [{"name": "m", "input_usd_per_1m": 1000.0, "output_usd_per_1m": 1000.0}]
    gw = await gateways([cloud_backend(cloud, models=priced)], routing=BUDGET, testing=knobs_for(rule),
                        telemetry={"flush_interval_ms": 60_000})  # no read of the spend after the first
    await eventually(lambda: "global" in gw.node.ledger.ledger.periods)
    old = gw.node.ledger.ledger.periods["global"]
    await eventually(lambda: rule.name(time.time()) != old, timeout=10)
    new = rule.name(time.time())
    assert gw.node.ledger.ledger.periods["global"] == old  # the node has not read the new period yet

    status, _, body = await post(http, gw)
    assert status == 200, body
    assert (await read_reserved(redis, new)).get(GLOBAL_SCOPE, 0.0) > 0
    assert (await read_reserved(redis, old)).get(GLOBAL_SCOPE, 0.0) == 0
