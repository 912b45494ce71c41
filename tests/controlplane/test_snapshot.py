"""Snapshot building details beyond the round trip (see test_state.py)."""

from controlplane.config import BackendConfig, DesiredConfig, ModelConfig
from controlplane.model import HealthState
from controlplane.snapshot import HealthObservation, Observed, build_snapshot


def test_discovered_context_length_fills_a_configured_model_without_one():
    desired = DesiredConfig(
        backends=[
            BackendConfig(
                name="gpu",
                url="http://h:1",
                type="vllm",
                models=["llama", {"name": "fixed", "context_length": 2048}],
                timeout_seconds=7,
            )
        ]
    )
    observed = Observed(
        health={
            "gpu": HealthObservation(
                HealthState.HEALTHY,
                99.0,
                (
                    ModelConfig(name="llama", context_length=8192),
                    ModelConfig(name="fixed", context_length=4096),
                    ModelConfig(name="extra", context_length=1024),
                ),
            )
        }
    )
    snap = build_snapshot(desired, observed, version=1, now=100.0)
    models = snap.backends["gpu"].models
    assert models["llama"].context_length == 8192  # filled in from the backend's report
    assert models["fixed"].context_length == 2048  # the operator's value wins
    assert models["extra"].context_length == 1024  # discovered only
    assert snap.backends["gpu"].timeout_seconds == 7
    assert snap.observed_at == 99.0
