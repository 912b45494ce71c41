"""Snapshot building details beyond the round trip (see test_state.py)."""

from nexus.core.config import BackendConfig, DesiredConfig, ModelConfig, PolicyConfig, RoutingConfig
from nexus.core.model import HealthState, QualityStats
from nexus.core.snapshot import HealthObservation, Observed, SnapshotCache, build_snapshot


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


def _observed(step: int) -> Observed:
    """Health that changes with `step` for some backends and not for others, plus quality for one."""
    return Observed(
        health={
            f"b{i}": HealthObservation(
                HealthState.UNHEALTHY if (i + step) % 5 == 0 else HealthState.HEALTHY,
                100.0 + step,
                (ModelConfig(name=f"disc-{step % 2}"),) if i == 3 else (),
                20.0 + (i if i < 4 else step),
            )
            for i in range(8)
        },
        quality={"b1": QualityStats(error_rate_1h=0.9, requests_1h=50)} if step % 2 else {},
        inflight={"b2": step},
    )


def test_a_build_reusing_the_previous_one_equals_a_build_from_scratch():
    # Router nodes rebuild with a SnapshotCache (issue 12, finding 6): what did not change is reused, and the
    # result must be exactly what a fresh build gives, whatever changed in between.
    desired = DesiredConfig(
        backends=[BackendConfig(name=f"b{i}", url=f"http://h:{i + 1}", type=("vllm", "openai")[i % 2],
                                secret="K" if i % 2 else None, models=["m", f"only-{i}"]) for i in range(8)],
        routing=RoutingConfig(aliases={"a": "m"}, policies=[PolicyConfig(model_pattern="only-*", min_tier=2)]),
    )
    cache = SnapshotCache(desired)
    for step in range(6):
        cached = build_snapshot(desired, _observed(step), version=1, now=101.0 + step, cache=cache)
        fresh = build_snapshot(desired, _observed(step), version=1, now=101.0 + step)
        assert cached == fresh, step
    again = build_snapshot(desired, _observed(5), version=1, now=106.0, cache=cache)
    assert again.backends["b0"] is cached.backends["b0"]  # nothing observed changed: the objects are reused
    assert again.by_model is cached.by_model
