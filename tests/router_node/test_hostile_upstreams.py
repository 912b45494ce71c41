"""Broken and misbehaving upstreams against a real gateway over loopback HTTP: none may fool, stall or leak
through the replica. Each upstream is a small raw asyncio server written for its test (tests/router_node/
rawhttp.py); each test reproduces one finding of the security review (issue 11) and fails before its fix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from multidict import CIMultiDict

from controlplane.model import HealthState
from controlplane.observed import write_health
from controlplane.snapshot import HealthObservation
from router_node.breaker import Breakers
from tests.harness import eventually
from tests.router_node.rawhttp import RawServer, chat_completion, read_request, response

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}


def chat(model: str = "m", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def backend(server: RawServer, name: str = "solo", **extra: object) -> dict:
    return {"name": name, "url": server.url, "type": "vllm", "models": ["m"], "max_concurrency": 100, **extra}


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


async def post(http, gw, body: bytes | None = None, headers: dict | None = None) -> tuple[int, CIMultiDict, dict]:
    async with http.post(gw.url + CHAT, data=body or chat(), headers={**JSON, **(headers or {})}) as resp:
        return resp.status, resp.headers.copy(), orjson.loads(await resp.read())


# ------------------------------------------------------------------------------------------------------
# 8. a circuit breaker per backend on each replica
# ------------------------------------------------------------------------------------------------------


async def test_a_dead_only_candidate_gets_fast_503s_and_recovers_within_a_second(gateways, http, redis):
    mode = {"broken": True}
    attempts = []

    async def flaky(reader, writer):
        request = await read_request(reader)
        attempts.append(request.path)
        writer.write(response(500, b'{"error": "down"}') if mode["broken"] else response(200, chat_completion()))
        await writer.drain()

    upstream = await RawServer(flaky).start()
    try:
        gw = await gateways([backend(upstream)], quality={"breaker_failures": 5, "breaker_retry_seconds": 1.0})
        clock = Clock(time.time())
        gw.node.breakers = Breakers(gw.node.breakers.settings, clock)  # the breaker's time is the test's

        # five failures reach the backend (502), then the circuit opens: fast 503s, no upstream attempt
        for _ in range(5):
            status, headers, body = await post(http, gw)
            assert status == 502, body
        assert headers["Retry-After"] == "1"  # the fifth opened the circuit: the client learns when to retry
        for _ in range(20):
            status, headers, body = await post(http, gw, headers={"X-Nexus-Explain": "true"})
            assert status == 503 and headers["Retry-After"] == "1", body
            reason = body["context"]["rejection_reasons"][0]
            assert reason["reconciler"] == "CircuitReconciler" and reason["agent_id"] == "solo"
            assert "circuit open: 5 failed attempts in a row" in reason["reason"]
            assert "next trial in" in reason["reason"]
            steps = {s["reconciler"]: s["excluded"] for s in body["context"]["explain"]["steps"]}
            assert [x["agent_id"] for x in steps["CircuitReconciler"]] == ["solo"]
        assert len(attempts) == 5

        # a second later one request is the half-open trial; it fails, the circuit opens again
        clock.now += 1.0
        assert (await post(http, gw))[0] == 502
        assert (await post(http, gw))[0] == 503
        assert len(attempts) == 6

        # the backend is back: the first request after the next trial time is served, and so is the rest
        mode["broken"] = False
        clock.now += 1.0
        statuses = [(await post(http, gw))[0] for _ in range(10)]
        assert statuses == [200] * 10
        assert len(attempts) == 16

        # the health worker now calls it unhealthy: this replica defers to it (no evidence of its own since)
        await write_health(redis, "solo", HealthObservation(HealthState.UNHEALTHY, clock.now + 0.5))
        await eventually(lambda: gw.node.snapshot.backends["solo"].health is HealthState.UNHEALTHY)
        status, headers, body = await post(http, gw)
        assert status == 503
        assert body["context"]["rejection_reasons"][0]["reconciler"] == "RequestAnalyzer"
        assert "failing health checks" in body["context"]["rejection_reasons"][0]["reason"]
        assert len(attempts) == 16
    finally:
        await upstream.stop()


async def test_a_replica_that_saw_a_backend_fail_overrides_a_stale_unhealthy_verdict(gateways, http, redis):
    """The soak's 9-11 s of 503s after recovery: the worker's recovery threshold kept a healthy backend out."""
    mode = {"broken": True}
    attempts = []

    async def flaky(reader, writer):
        await read_request(reader)
        attempts.append(mode["broken"])
        writer.write(response(503, b"{}") if mode["broken"] else response(200, chat_completion()))
        await writer.drain()

    upstream = await RawServer(flaky).start()
    try:
        gw = await gateways([backend(upstream)], quality={"breaker_failures": 5, "breaker_retry_seconds": 1.0})
        clock = Clock(time.time())
        gw.node.breakers = Breakers(gw.node.breakers.settings, clock)
        assert (await post(http, gw))[0] == 502  # one failure seen here
        await write_health(redis, "solo", HealthObservation(HealthState.UNHEALTHY, clock.now))
        await eventually(lambda: gw.node.snapshot.backends["solo"].health is HealthState.UNHEALTHY)

        # the worker's verdict plus this replica's own failure: a trial is due now, it fails, and the circuit is
        # open for a second, whose rejection the worker's reason gives (both agree: do not use it)
        assert (await post(http, gw))[0] == 502
        status, _, body = await post(http, gw)
        assert status == 503 and body["context"]["rejection_reasons"][0]["reconciler"] == "RequestAnalyzer"
        mode["broken"] = False
        clock.now += 1.0
        status, headers, body = await post(http, gw, headers={"X-Nexus-Explain": "true"})
        assert status == 200, body
        assert "fails its health checks, but this router node saw it answer" in headers["X-Nexus-Warning"]
        assert body["nexus_explain"]["rejection_reasons"] == []
        # traffic flows although the worker still says unhealthy (and repeats it), until its probes agree
        await write_health(redis, "solo", HealthObservation(HealthState.UNHEALTHY, clock.now + 0.5))
        assert [(await post(http, gw))[0] for _ in range(5)] == [200] * 5
        assert attempts == [True, True, False, False, False, False, False, False]
    finally:
        await upstream.stop()
