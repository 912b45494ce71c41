from time import perf_counter_ns

import orjson

from nexus.core.model import HealthState, QualityStats
from nexus.core.pipeline import Reject, Route, explain, rejection_context
from tests.core.pipeline.helpers import backend, run, snapshot


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
        "RequestAnalyzer", "TenantReconciler", "PrivacyReconciler", "BudgetReconciler", "TierReconciler",
        "QualityReconciler",
        "CircuitReconciler", "SchedulerReconciler"]
    assert out["steps"][2]["excluded"][0]["agent_id"] == "c"
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


PRIVACY_REASON = {
    "agent_id": "c",
    "reconciler": "PrivacyReconciler",
    "reason": "backend privacy zone is open; policy 'm*' requires restricted",
    "suggested_action": "add a backend with zone = \"restricted\" serving m, or set privacy = \"unrestricted\" on "
    "policy 'm*'",
}


def _without_durations(out: dict) -> dict:
    return {**out, "steps": [{k: v for k, v in s.items() if k != "duration_us"} for s in out["steps"]]}


def test_explain_route_is_exactly_this_document():
    """The whole document, key by key (what the admin dry run and X-Nexus-Explain return). Scores by the
    smart formula: a = (50 * 1/(1+0) + 20 * 0.5) * 1 + 30 (idle) = 90; b = 50/3 + 10 + 30."""
    snap = snapshot([backend("a", priority=0), backend("b", priority=2), backend("c", "openai")],
                    policies=[{"model_pattern": "m*", "privacy": "restricted"}])
    out = _without_durations(explain(run(snap)))
    steps = [{"reconciler": name, "excluded": [PRIVACY_REASON] if name == "PrivacyReconciler" else [],
              "remaining": 3 if name in ("RequestAnalyzer", "TenantReconciler") else 2}
             for name in ("RequestAnalyzer", "TenantReconciler", "PrivacyReconciler", "BudgetReconciler",
                          "TierReconciler", "QualityReconciler", "CircuitReconciler", "SchedulerReconciler")]
    assert out == {
        "requested_model": "m",
        "resolved_model": "m",
        "matched_policy": {"model_pattern": "m*", "privacy": "restricted", "min_tier": None,
                           "max_cost_per_request": None, "fallback_allowed": True},
        "budget_status": "normal",
        "warnings": [],
        "steps": steps,
        "rejection_reasons": [PRIVACY_REASON],
        "decision": "route",
        "backend": "a",
        "route_reason": "highest_score",
        "alternatives": ["b"],
        "scores": {"a": 90.0, "b": round(50 / 3 + 10 + 30, 6)},
        "cost_estimate_usd": 0.0,
        "privacy_zone_required": "restricted",
    }


def test_explain_reject_and_queue_carry_their_own_fields():
    out = explain(mixed_rejection())
    assert set(out) == {"requested_model", "resolved_model", "matched_policy", "budget_status", "warnings", "steps",
                        "rejection_reasons", "decision", "not_found", "context", "privacy_zone_required"}
    assert (out["decision"], out["not_found"], out["privacy_zone_required"]) == ("reject", False, "restricted")
    assert out["matched_policy"]["min_tier"] == 3
    assert out["context"] == rejection_context(mixed_rejection())
    assert set(out["context"]) == {"requested_model", "resolved_model", "rejection_reasons", "reasons_by_reconciler",
                                   "suggested_action", "available_backends", "budget_status",
                                   "privacy_zone_required", "required_tier"}
    assert out["context"]["available_backends"] == ["cloud", "local-flaky", "local-low"]
    assert (out["context"]["requested_model"], out["context"]["resolved_model"]) == ("m", "m")
    assert "retry_after_seconds" not in out["context"]  # only when asked for, and only when waiting helps

    queued = explain(run(snapshot([backend("warming")], health={"warming": HealthState.LOADING})))
    assert (queued["decision"], queued["candidates"]) == ("queue", ["warming"])
    assert queued["queue_reason"] and "backend" not in queued and "context" not in queued
    assert "privacy_zone_required" not in queued and queued["matched_policy"] is None
