"""nexus.worker.health: the health state machine as a transition matrix, the latency EMA, model discovery."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.core.config import LIMITS, ModelConfig
from nexus.core.model import HealthState
from nexus.core.observed import HealthRecord
from nexus.worker.health import HealthPolicy, ProbeResult, ProbeStatus, is_loading_reply, next_health, parse_models

NOW = 1_800_000_000.0
POLICY = HealthPolicy(failure_threshold=3, recovery_threshold=2, stale_after=20.0, ema_alpha=0.3)
H, U, L, K = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.LOADING, HealthState.UNKNOWN
OK = ProbeResult(ProbeStatus.OK, 5.0)
FAIL = ProbeResult(ProbeStatus.FAILED, error="HTTP 500")
LOADING = ProbeResult(ProbeStatus.LOADING, 2.0)


def rec(state: HealthState, fails: int = 0, oks: int = 0, *, age: float = 10.0, **extra: Any) -> HealthRecord:
    return HealthRecord(
        state=state, checked_at=NOW - age, consecutive_failures=fails, consecutive_successes=oks, **extra
    )


@pytest.mark.parametrize(
    ("prev", "probe", "state", "fails", "oks"),
    [
        pytest.param(None, OK, H, 0, 1, id="never-seen+ok->healthy-at-once"),
        pytest.param(None, FAIL, K, 1, 0, id="never-seen+fail->unknown-below-threshold"),
        pytest.param(None, LOADING, L, 0, 0, id="never-seen+loading->loading"),
        pytest.param(rec(K, 2), FAIL, U, 3, 0, id="unknown-at-threshold+fail->unhealthy"),
        pytest.param(rec(K, 1), OK, H, 0, 1, id="unknown+ok->healthy"),
        pytest.param(rec(H, 0, 5), OK, H, 0, 6, id="healthy+ok->healthy"),
        pytest.param(rec(H, 0, 5), FAIL, H, 1, 0, id="healthy+first-fail->still-healthy"),
        pytest.param(rec(H, 1), FAIL, H, 2, 0, id="healthy+second-fail->still-healthy"),
        pytest.param(rec(H, 2), FAIL, U, 3, 0, id="healthy+third-fail->unhealthy"),
        pytest.param(rec(H, 0, 3), LOADING, L, 0, 0, id="healthy+loading->loading"),
        pytest.param(rec(U, 7), FAIL, U, 8, 0, id="unhealthy+fail->unhealthy"),
        pytest.param(rec(U, 7), OK, U, 0, 1, id="unhealthy+first-ok->still-unhealthy"),
        pytest.param(rec(U, 0, 1), OK, H, 0, 2, id="unhealthy+second-ok->healthy"),
        pytest.param(rec(U, 0, 1), FAIL, U, 1, 0, id="unhealthy+ok-then-fail-resets-recovery"),
        pytest.param(rec(U, 4), LOADING, L, 0, 0, id="unhealthy+loading->loading"),
        pytest.param(rec(L), OK, H, 0, 1, id="loading+ok->healthy"),
        pytest.param(rec(L), FAIL, L, 1, 0, id="loading+fail->still-loading-below-threshold"),
        pytest.param(rec(L, 2), FAIL, U, 3, 0, id="loading+fail-at-threshold->unhealthy"),
        pytest.param(rec(H, 2, age=25.0), FAIL, K, 1, 0, id="stale-healthy-is-not-trusted"),
        pytest.param(rec(U, 9, age=25.0), OK, H, 0, 1, id="stale-unhealthy+ok->healthy"),
    ],
)
def test_transitions(prev: HealthRecord | None, probe: ProbeResult, state: HealthState, fails: int, oks: int) -> None:
    new = next_health(prev, probe, POLICY, NOW)
    assert (new.state, new.consecutive_failures, new.consecutive_successes) == (state, fails, oks)
    assert new.checked_at == NOW


@pytest.mark.parametrize(
    ("threshold", "state"), [pytest.param(1, U, id="threshold-1-fails-at-once"), pytest.param(2, H, id="threshold-2")]
)
def test_failure_threshold_is_configurable(threshold: int, state: HealthState) -> None:
    policy = HealthPolicy(failure_threshold=threshold, recovery_threshold=1, stale_after=20.0)
    assert next_health(rec(H), FAIL, policy, NOW).state is state


def test_a_failure_during_warm_up_is_loading() -> None:
    new = next_health(rec(H, 2), FAIL, POLICY, NOW, warming_up=True)
    assert (new.state, new.consecutive_failures) == (L, 0)


def test_latency_ema_moves_on_successes_only() -> None:
    first = next_health(None, ProbeResult(ProbeStatus.OK, 100.0), POLICY, NOW)
    assert first.latency_ema_ms == 100.0
    second = next_health(first, ProbeResult(ProbeStatus.OK, 200.0), POLICY, NOW + 1)
    assert second.latency_ema_ms == pytest.approx(0.3 * 200 + 0.7 * 100)
    assert next_health(second, FAIL, POLICY, NOW + 2).latency_ema_ms == second.latency_ema_ms
    assert next_health(second, LOADING, POLICY, NOW + 2).latency_ema_ms == second.latency_ema_ms


def test_discovered_models_are_replaced_on_success_and_kept_otherwise() -> None:
    a, b = ModelConfig(name="a", context_length=4096), ModelConfig(name="b")
    found = next_health(None, ProbeResult(ProbeStatus.OK, 1.0, (a, b)), POLICY, NOW)
    assert found.models == [a, b]
    assert next_health(found, FAIL, POLICY, NOW + 1).models == [a, b]
    assert next_health(found, ProbeResult(ProbeStatus.OK, 1.0), POLICY, NOW + 1).models == [a, b]
    assert next_health(found, ProbeResult(ProbeStatus.OK, 1.0, (b,)), POLICY, NOW + 1).models == [b]


@pytest.mark.parametrize(
    ("status", "body", "loading"),
    [
        pytest.param(503, b'{"error": {"message": "model is loading (gpu)"}}', True, id="503-loading"),
        pytest.param(503, b'{"error":"Loading model"}', True, id="503-Loading-any-case"),
        pytest.param(503, b'{"error": "overloaded"}', False, id="503-other"),
        pytest.param(200, b'{"note": "loading"}', False, id="200-mentions-loading"),
    ],
)
def test_is_loading_reply(status: int, body: bytes, loading: bool) -> None:
    assert is_loading_reply(status, body) is loading


@pytest.mark.parametrize(
    ("type_", "payload", "expected"),
    [
        pytest.param(
            "vllm",
            {"object": "list", "data": [{"id": "m1", "context_length": 8192}, {"id": "m2"}]},
            [ModelConfig(name="m1", context_length=8192), ModelConfig(name="m2")],
            id="openai-list-with-fake-backend-context",
        ),
        pytest.param(
            "vllm",
            {"data": [{"id": "llama", "max_model_len": 32768}]},
            [ModelConfig(name="llama", context_length=32768)],
            id="vllm-max-model-len",
        ),
        pytest.param(
            "ollama",
            {"models": [{"name": "llama3:8b", "model": "llama3:8b", "details": {}}]},
            [ModelConfig(name="llama3:8b")],
            id="ollama-tags",
        ),
        pytest.param(
            "anthropic",
            {"data": [{"id": "claude-x", "type": "model", "display_name": "Claude X"}]},
            [ModelConfig(name="claude-x")],
            id="anthropic-models",
        ),
        pytest.param(
            "vllm",
            {"data": [{"id": "v", "capabilities": ["completion", "vision"]}]},
            [ModelConfig(name="v", vision=True, tools=False)],
            id="reported-capabilities",
        ),
        pytest.param("lmstudio", {"data": [{"id": "q", "type": "vlm"}]}, [ModelConfig(name="q", vision=True)],
                     id="lmstudio-vlm"),
        pytest.param(
            "vllm",
            {"data": [{"id": "x", "context_length": True}, {"id": "y", "context_length": -5}, {"id": "x"}]},
            [ModelConfig(name="x"), ModelConfig(name="y")],
            id="bad-context-ignored-duplicates-dropped",
        ),
        pytest.param("vllm", {"data": [{"id": ""}, {"id": 3}, "m", None]}, [], id="unusable-entries-skipped"),
        pytest.param("vllm", ["m1"], [], id="not-an-object"),
        pytest.param("vllm", {"data": "m1"}, [], id="data-not-a-list"),
        pytest.param(
            "vllm",
            {"data": [{"id": "x" * 300}, {"id": "huge", "context_length": 2**40}, {"id": "ok"}]},
            [ModelConfig(name="ok")],
            id="past-the-bounds-skipped",
        ),
        pytest.param(
            "vllm",
            {"data": [{"id": f"m{i}"} for i in range(LIMITS.models_per_backend + 50)]},
            [ModelConfig(name=f"m{i}") for i in range(LIMITS.models_per_backend)],
            id="at-most-the-model-limit",
        ),
    ],
)
def test_parse_models(type_: str, payload: Any, expected: list[ModelConfig]) -> None:
    assert list(parse_models(type_, payload)) == expected
