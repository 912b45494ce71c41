"""The hard limit across 3 replicas under 32 concurrent clients: measured overshoot.

Each request costs exactly its estimate (input is free, the fake returns `max_tokens` completion
tokens), so with budget leases the guarantee is exact: spend never passes the limit. The bound Nexus
states in general: spend passes a blocking hard limit only by how much requests cost more than their
estimate (nexus/core/reservations.py). Before leases, the same load overshot by $0.19 to $0.43.
"""

from __future__ import annotations

import asyncio
import itertools

from nexus.tools.devcluster import FakeSpec
from tests.clock import knobs_for, steady_period
from tests.e2e.conftest import chat

PRICE_OUT = 5000.0  # USD per 1M output tokens: 2 tokens = $0.01
COST = 2 * PRICE_OUT / 1e6
LIMIT = 2.0
BODY = {"model": "m", "messages": [{"role": "user", "content": "tell me a rather long story please"}], "max_tokens": 2}
FAKES = [
    FakeSpec("local", type="vllm", backend={"priority": 5}),
    FakeSpec(
        "cloud",
        type="generic",
        backend={"priority": 0, "models": [{"name": "m", "input_usd_per_1m": 0.0, "output_usd_per_1m": PRICE_OUT}]},
    ),
]


async def test_hard_limit_holds_across_replicas_under_concurrency(cluster, http):
    c = await cluster(
        routers=3,
        workers=0,
        fakes=FAKES,
        config={
            "routing": {"budget": {"monthly_limit_usd": LIMIT, "hard_limit_action": "block_cloud"}},
            "telemetry": {"flush_interval_ms": 50},
            # one budget period for the whole run: a real month end passing mid-test would reset the budget
            "testing": knobs_for(steady_period()),
        },
    )
    urls = itertools.cycle([r.url for r in c.routers])
    served = {"cloud": 0, "local": 0}
    costs: list[float] = []

    async def client() -> None:
        for _ in range(15):
            status, headers, body = await chat(http, next(urls), BODY)
            assert status == 200, body
            served[headers["X-Nexus-Backend"]] += 1
            if headers["X-Nexus-Backend"] == "cloud":
                assert body["usage"]["completion_tokens"] == 2
                costs.append(body["usage"]["completion_tokens"] * PRICE_OUT / 1e6)

    await asyncio.gather(*(client() for _ in range(32)))  # 480 requests, $4.80 if all went to cloud
    spent = sum(costs)
    print(
        f"\n32 clients x 3 replicas, limit ${LIMIT:.2f}: cloud served {served['cloud']} (${spent:.2f}), "
        f"local {served['local']}; overshoot ${max(0.0, spent - LIMIT):.2f}"
    )
    assert spent <= LIMIT + 1e-9
    # the budget is used, not refused early: quiet runs use all of it ($2.00, $1.96); leases held unused by
    # other replicas and telemetry not yet flushed count as committed, so a loaded machine uses less ($1.54
    # once, with a benchmark running beside the suite)
    assert spent >= LIMIT * 0.5
    assert served["local"] > 0
