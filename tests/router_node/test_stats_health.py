"""`GET /v1/stats` (cluster-wide, Rust Nexus's shape), `/health` details, and the Rust Nexus metric names."""

from __future__ import annotations

import time

import openai
from prometheus_client.parser import text_string_to_metric_families

from nexus.core.model import HealthState
from nexus.core.snapshot import HealthObservation
from tests.harness import eventually
from tests.router_node.conftest import backend_for
from tests.stored import put_health as write_health


async def _json(http, url):
    async with http.get(url) as r:
        return r.status, await r.json()


async def test_health_details_follow_the_backends(fakes, gateways, http, redis):
    a, b = await fakes("a"), await fakes("b")
    gw = await gateways([backend_for(a), backend_for(b)])
    status, body = await _json(http, f"{gw.url}/health")
    assert status == 200 and body["status"] == "degraded"  # not checked yet
    assert body["backends"] == {"total": 2, "healthy": 0, "unhealthy": 0, "loading": 0, "unknown": 2}
    now = time.time()
    await write_health(redis, "a", HealthObservation(HealthState.HEALTHY, now))
    await write_health(redis, "b", HealthObservation(HealthState.HEALTHY, now))
    await eventually(lambda: gw.node.snapshot.backends["b"].health is HealthState.HEALTHY)
    assert (await _json(http, f"{gw.url}/health"))[1]["status"] == "healthy"
    await write_health(redis, "a", HealthObservation(HealthState.UNHEALTHY, now))
    await write_health(redis, "b", HealthObservation(HealthState.UNHEALTHY, now))
    await eventually(lambda: gw.node.snapshot.backends["b"].health is HealthState.UNHEALTHY)
    status, body = await _json(http, f"{gw.url}/health")
    assert status == 200 and body["status"] == "unhealthy" and body["backends"]["unhealthy"] == 2


async def test_stats_count_the_clusters_requests(fakes, gateways, http, redis):
    a = await fakes("a", ("m",), latency_ms=1)
    b = await fakes("b", ("m", "other"), latency_ms=1)
    gw1 = await gateways([backend_for(a, priority=1), backend_for(b, priority=5)], node_id="n1")
    gw2 = await gateways([backend_for(a, priority=1), backend_for(b, priority=5)], node_id="n2")
    for gw, model, n in ((gw1, "m", 3), (gw2, "other", 2)):
        async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
            for _ in range(n):
                await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    await eventually(lambda: gw1.node.telemetry.buffered == 0 and gw2.node.telemetry.buffered == 0)
    await eventually(lambda: gw1.node.snapshot is not None)
    status, stats = await _json(http, f"{gw1.url}/v1/stats")
    assert status == 200
    assert stats["requests"] == {"total": 5, "success": 5, "errors": 0}
    by_name = {s["name"]: s for s in stats["backends"]}
    assert (by_name["a"]["requests"], by_name["b"]["requests"]) == (3, 2)
    assert {m["name"]: m["requests"] for m in stats["models"]} == {"m": 3, "other": 2}
    assert stats["nodes"] == 2 and stats["uptime_seconds"] >= 0
    assert set(stats["budget"]) == {"global"} and stats["budget"]["global"]["status"] == "normal"
    assert {"pending", "error_rate_1h", "avg_ttft_ms", "success_rate_24h", "average_latency_ms"} <= set(by_name["a"])
    # the other replica answers the same cluster-wide figures
    assert (await _json(http, f"{gw2.url}/v1/stats"))[1]["requests"]["total"] == 5


async def test_rust_metric_names_on_metrics(fakes, gateways, http):
    a = await fakes("a", ("m",))
    gw = await gateways([backend_for(a, type="generic", models=[{"name": "m", "input_usd_per_1m": 1000.0}])],
                        routing={"budget": {"monthly_limit_usd": 100.0}})
    async with openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    async with http.get(f"{gw.url}/metrics") as r:
        text = await r.text()
    samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
               for fam in text_string_to_metric_families(text) for m in fam.samples}
    req = (("backend", "a"), ("model", "m"))
    assert samples[("nexus_backends_total", ())] == 1 and samples[("nexus_models_available", ())] == 1
    assert samples[("nexus_budget_limit_usd", (("scope", "global"),))] == 100.0
    assert samples[("nexus_request_duration_seconds_count", req)] == 1
    assert samples[("nexus_tokens_total", (*req, ("type", "prompt")))] > 0
    assert samples[("nexus_cost_per_request_usd_sum", req)] > 0
