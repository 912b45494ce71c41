"""nexus.worker.lifecycle and nexus.worker.fleet against an Ollama stand-in on loopback and the session Redis:
operations run once under their lease and fail with a reason (never a crash) on bad targets or replies; the
fleet job turns request rates into recommendations and, with auto_prewarm, into load operations."""

from __future__ import annotations

import time

import aiohttp
import pytest

from nexus.core import keys
from nexus.core.fleet.lifecycle import Operation, OpKind, OpState
from nexus.core.fleet.store import Lease, read_marks, read_ops, read_ps, read_recommendations, write_op
from nexus.core.state import seed_desired
from nexus.tools.fake_ollama import FakeOllama
from nexus.worker.fleet import run_fleet
from nexus.worker.lifecycle import run_lifecycle
from tests.clock import knobs_for, steady_period
from tests.worker.conftest import RawServer, worker_settings_for


@pytest.fixture
async def ollama():
    async with FakeOllama(["m", "n"], load_seconds=0.05) as fake:
        yield fake


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def _settings(url: str, **sections):
    backends = [{"name": "o", "url": url, "type": "ollama", "models": ["m", "n"]},
                {"name": "v", "url": "http://127.0.0.1:9", "type": "vllm", "models": ["m"]}]
    return worker_settings_for(backends=backends, lifecycle={"poll_seconds": 0.02, "load_timeout_seconds": 5},
                               **sections)


def _op(op_id: str, kind: OpKind, **where) -> Operation:
    return Operation(id=op_id, kind=kind, model=where.pop("model", "m"), created_at=1.0, updated_at=1.0, **where)


async def test_a_load_runs_once_and_records_what_is_loaded(redis, ollama, http):
    settings = _settings(f"http://127.0.0.1:{ollama.port}")
    await seed_desired(redis, settings.desired())
    await write_op(redis, _op("l1", OpKind.LOAD, backend="o"))
    assert (await run_lifecycle(redis, http, settings))["ran"] == ["done"]
    assert (await run_lifecycle(redis, http, settings))["ran"] == []  # done: never again
    assert [e["op"] for e in ollama.log] == ["load"]
    assert [m["name"] for m in (await read_ps(redis))["o"]["models"]] == ["m"]
    assert await read_marks(redis) == {}


async def test_bad_targets_and_replies_fail_the_operation_with_a_reason(redis, ollama, http):
    garbage = await RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!").start()
    try:
        settings = _settings(f"http://127.0.0.1:{ollama.port}")
        backends = [*settings.desired().backends]
        bad = backends[0].model_copy(update={"name": "g", "url": garbage.url})
        await seed_desired(redis, settings.desired().model_copy(update={"backends": [*backends, bad]}))
        await write_op(redis, _op("f1", OpKind.LOAD, backend="v"))
        await write_op(redis, _op("f2", OpKind.LOAD, backend="o", model="missing"))
        await write_op(redis, _op("f3", OpKind.MIGRATE, source="o", target="nope"))
        await write_op(redis, _op("f4", OpKind.UNLOAD, backend="g"))
        await run_lifecycle(redis, http, settings)
        ops = await read_ops(redis)
        assert {i: o.state for i, o in ops.items()} == dict.fromkeys(("f1", "f2", "f3", "f4"), OpState.FAILED)
        assert "not an Ollama backend" in ops["f1"].error and "HTTP 404" in ops["f2"].error
        assert "'nope'" in ops["f3"].error and "/api/generate: not JSON" in ops["f4"].error
        assert await read_marks(redis) == {}  # a failed step leaves no mark behind
    finally:
        await garbage.stop()


async def test_an_operation_leased_by_another_worker_is_left_alone(redis, ollama, http):
    settings = _settings(f"http://127.0.0.1:{ollama.port}")
    await seed_desired(redis, settings.desired())
    await write_op(redis, _op("busy", OpKind.LOAD, backend="o"))
    assert await Lease(redis, "op-busy", 30).acquire()
    assert (await run_lifecycle(redis, http, settings))["ran"] == []
    assert (await read_ops(redis))["busy"].state is OpState.PENDING and ollama.log == []


async def test_the_fleet_job_recommends_busy_unloaded_models_and_prewarms_them(redis, ollama, http):
    # the fleet's clock is the real now (Redis's TTLs are by its own clock), in a period no real month end cuts
    t0 = time.time()
    settings = _settings(f"http://127.0.0.1:{ollama.port}", fleet={"auto_prewarm": True, "window_seconds": 600},
                         testing=knobs_for(steady_period(t0)))
    await seed_desired(redis, settings.desired())
    period = settings.routing.calendar(settings.testing).periods(["global"], t0)["global"]
    agg = keys.telemetry_agg(period)
    await redis.hset(agg, mapping={"model.requests:m": 10, "model.requests:n": 10})
    await run_fleet(redis, settings, lambda: t0)
    await redis.hset(agg, mapping={"model.requests:m": 70, "model.requests:n": 10})
    result = await run_fleet(redis, settings, lambda: t0 + 60)
    assert result["recommendations"] == 1
    recs = (await read_recommendations(redis))["recommendations"]
    assert [(r["model"], r["backend"], r["performed"]) for r in recs] == [("m", "o", True)]
    assert "60.00 requests/min" in recs[0]["reason"]
    ops = list((await read_ops(redis)).values())
    assert [(o.kind, o.backend, o.model) for o in ops] == [(OpKind.LOAD, "o", "m")]
    await run_fleet(redis, settings, lambda: t0 + 61)  # still pending: not submitted twice
    assert len(await read_ops(redis)) == 1
    await run_lifecycle(redis, http, settings)
    await run_fleet(redis, settings, lambda: t0 + 120)  # loaded now: nothing to recommend
    assert (await read_recommendations(redis))["recommendations"] == []
