"""Lifecycle marks in a snapshot: loading is per model, draining/unloaded leave the model's candidates while
another remains, expired marks count for nothing; the scheduler queues behind a loading best candidate."""

from __future__ import annotations

from nexus.core.config import BackendConfig, DesiredConfig
from nexus.core.fleet.lifecycle import LifecycleMark, MarkState
from nexus.core.model import HealthState
from nexus.core.pipeline import Queue, Route
from nexus.core.snapshot import HealthObservation, Observed, build_snapshot
from tests.core.pipeline.helpers import run

DESIRED = DesiredConfig(backends=[
    BackendConfig(name="a", url="http://a:1", type="ollama", models=["m", "other"]),
    BackendConfig(name="b", url="http://b:1", type="ollama", models=["m"]),
])
HEALTHY = {n: HealthObservation(HealthState.HEALTHY, 100.0) for n in ("a", "b")}


def _snap(marks, now=100.0):
    return build_snapshot(DESIRED, Observed(health=HEALTHY, lifecycle=marks), version=1, now=now)


def _names(snap, model):
    return [(b.name, b.health.value) for b in snap.by_model[model]]


def test_loading_marks_one_model_of_one_backend_only():
    snap = _snap({"a": {"m": LifecycleMark(MarkState.LOADING, "op", 200.0)}})
    assert _names(snap, "m") == [("a", "loading"), ("b", "healthy")]
    assert _names(snap, "other") == [("a", "healthy")] and snap.backends["a"].health is HealthState.HEALTHY
    assert dict(snap.lifecycle) == {"m": "loading=a"}


def test_draining_and_unloaded_backends_leave_the_model_while_another_remains():
    for state in (MarkState.DRAINING, MarkState.UNLOADED):
        snap = _snap({"a": {"m": LifecycleMark(state, "op", 200.0)}})
        assert _names(snap, "m") == [("b", "healthy")] and snap.lifecycle["m"] == f"{state.value}=a"
    both = _snap({n: {"m": LifecycleMark(MarkState.DRAINING, "op", 200.0)} for n in ("a", "b")})
    assert [n for n, _ in _names(both, "m")] == ["a", "b"]  # better those than none


def test_expired_marks_count_for_nothing():
    snap = _snap({"a": {"m": LifecycleMark(MarkState.LOADING, "op", 99.0)}})
    assert _names(snap, "m") == [("a", "healthy"), ("b", "healthy")] and dict(snap.lifecycle) == {}


def test_a_loading_best_candidate_queues_and_a_loading_other_one_does_not():
    loading = LifecycleMark(MarkState.LOADING, "op", 200.0)
    routed = run(_snap({"b": {"m": loading}}))
    assert isinstance(routed, Route) and routed.backend.name == "a"
    queued = run(_snap({"a": {"m": loading}}))
    assert isinstance(queued, Queue) and "a is loading" in queued.reason
    assert isinstance(run(_snap({"a": {"m": loading}}), model="other"), Route)
