from time import perf_counter_ns

import orjson

from controlplane.model import HealthState, QualityStats
from router_node.pipeline import Reject, Route, explain, rejection_context
from tests.router_node.pipeline.helpers import backend, run, snapshot


def mixed_rejection() -> Reject:
    snap = snapshot(
        [backend("cloud", "openai"), backend("local-low", "vllm", tier=1), backend("local-flaky", "vllm", tier=4),
         backend("local-down", "vllm", tier=4)],
        policies=[{"model_pattern": "m", "privacy": "restricted", "min_tier": 3}],
        quality={"local-flaky": QualityStats(error_rate_1h=0.8, requests_1h=50)},
        health={"local-down": HealthState.UNHEALTHY},
    )
    decision = run(snap)
    assert isinstance(decision, Reject)
    return decision


def test_rejection_context_groups_every_reason_and_names_the_constraints():
    ctx = rejection_context(mixed_rejection(), retry_after_seconds=10)
    assert {r["agent_id"] for r in ctx["rejection_reasons"]} == {"cloud", "local-low", "local-flaky", "local-down"}
    assert set(ctx["reasons_by_reconciler"]) == {
        "RequestAnalyzer", "PrivacyReconciler", "TierReconciler", "QualityReconciler"}
    assert ctx["reasons_by_reconciler"]["PrivacyReconciler"][0]["agent_id"] == "cloud"
    assert ctx["privacy_zone_required"] == "restricted"
    assert ctx["required_tier"] == 3
    assert ctx["budget_status"] == "normal"
    assert ctx["retry_after_seconds"] == 10  # a flaky or down backend may recover
    # the header a client can send beats waiting or an operator's change
    assert "X-Nexus-Flexible" in ctx["suggested_action"]
    orjson.dumps(ctx)


def test_retry_after_only_when_waiting_helps():
    decision = run(snapshot([backend("cloud", "openai")], policies=[{"model_pattern": "m", "privacy": "restricted"}]))
    ctx = rejection_context(decision, retry_after_seconds=10)
    assert "retry_after_seconds" not in ctx
    assert ctx["suggested_action"].startswith("add a backend with zone")


def test_explain_route_has_steps_policy_scores_and_choice():
    snap = snapshot([backend("a", priority=0), backend("b", priority=2), backend("c", "openai")],
                    policies=[{"model_pattern": "m*", "privacy": "restricted"}])
    t0 = perf_counter_ns()
    decision = run(snap)
    wall_us = (perf_counter_ns() - t0) / 1000.0
    assert isinstance(decision, Route)
    out = explain(decision)
    assert out["decision"] == "route"
    assert out["backend"] == "a"
    assert out["alternatives"] == ["b"]
    assert out["matched_policy"]["model_pattern"] == "m*"
    assert [s["reconciler"] for s in out["steps"]] == [
        "RequestAnalyzer", "PrivacyReconciler", "BudgetReconciler", "TierReconciler", "QualityReconciler",
        "CircuitReconciler", "SchedulerReconciler"]
    assert out["steps"][1]["excluded"][0]["agent_id"] == "c"
    assert out["scores"]["a"] > out["scores"]["b"]
    # each step was timed (a call takes more than nothing) in microseconds: together no longer than the
    # whole decision as timed from outside
    durations = [s["duration_us"] for s in out["steps"]]
    assert all(d > 0 for d in durations), durations
    assert sum(durations) <= wall_us, (durations, wall_us)
    orjson.dumps(out)


def test_explain_reject_embeds_context():
    out = explain(mixed_rejection())
    assert out["decision"] == "reject"
    assert out["context"]["required_tier"] == 3
