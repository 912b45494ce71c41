"""Properties of the pipeline over random backend sets, policies, budgets and observations."""

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.core.model import HealthState, QualityStats, Strategy, TierMode, Zone
from nexus.core.pipeline import (
    FILTER_RECONCILERS,
    Queue,
    Reject,
    Route,
    RoutingIntent,
    analyzer,
    decide,
    extract_requirements,
    scheduler,
)
from tests.core.pipeline.helpers import backend, chat, snapshot

TYPES = ["ollama", "vllm", "llamacpp", "lmstudio", "openai", "anthropic", "google", "generic"]
MODELS = ["llama3:8b", "llama3:70b", "gpt-4o", "mistral"]
PATTERNS = ["*", "llama3*", "llama3:70b", "gpt-*", "gpt-4?", "m*", "[gl]*"]

backend_specs = st.lists(
    st.fixed_dictionaries({
        "type": st.sampled_from(TYPES),
        "zone": st.sampled_from([None, "restricted", "open"]),
        "tier": st.integers(1, 5),
        "priority": st.integers(0, 5),
        "max_concurrency": st.integers(1, 4),
        "models": st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
        "vision": st.booleans(),
        "context": st.sampled_from([None, 16, 4096]),
        "health": st.sampled_from(list(HealthState)),
        "error_rate": st.sampled_from([None, 0.0, 0.3, 0.5, 0.9]),
        "inflight": st.integers(0, 4),
    }),
    min_size=1, max_size=10,
)
policy_specs = st.lists(
    st.fixed_dictionaries({
        "model_pattern": st.sampled_from(PATTERNS),
        "privacy": st.sampled_from(["restricted", "unrestricted"]),
        "min_tier": st.sampled_from([None, 1, 3, 5]),
        "max_cost_per_request": st.sampled_from([None, 0.0, 0.001, 1.0]),
    }),
    max_size=4,
)
budget_specs = st.fixed_dictionaries({
    "limit": st.sampled_from([None, 0.0, 10.0, 100.0]),
    "spend": st.sampled_from([0.0, 7.5, 10.0, 80.0, 150.0]),
    "action": st.sampled_from(["warn", "block_cloud", "block_all"]),
})
requests = st.fixed_dictionaries({
    "model": st.sampled_from([*MODELS, "unknown"]),
    "vision": st.booleans(),
    "max_tokens": st.sampled_from([None, 10, 5000]),
    "flexible": st.booleans(),
    # this router node's circuit breakers: open circuits, and worker-unhealthy backends it may use
    "open": st.sets(st.integers(0, 9), max_size=3),
    "usable": st.sets(st.integers(0, 9), max_size=3),
})


def build(specs, policies, budget):
    backends = [
        backend(f"b{i}", s["type"], tier=s["tier"], priority=s["priority"], zone=s["zone"],
                max_concurrency=s["max_concurrency"],
                models=[{"name": m, "vision": s["vision"], "context_length": s["context"]} for m in s["models"]])
        for i, s in enumerate(specs)
    ]
    return snapshot(
        backends,
        policies=policies,
        budget={"monthly_limit_usd": budget["limit"], "hard_limit_action": budget["action"]},
        spend={"global": budget["spend"]},
        health={f"b{i}": s["health"] for i, s in enumerate(specs)},
        quality={f"b{i}": QualityStats(error_rate_1h=s["error_rate"], requests_1h=100)
                 for i, s in enumerate(specs) if s["error_rate"] is not None},
        inflight={f"b{i}": s["inflight"] for i, s in enumerate(specs)},
    )


def intent_for(req, seed=0):
    content = [{"type": "text", "text": "hi"}]
    if req["vision"]:
        content.append({"type": "image_url", "image_url": {"url": "data:,"}})
    body = chat(messages=[{"role": "user", "content": content}], max_tokens=req["max_tokens"])
    mode = TierMode.FLEXIBLE if req["flexible"] else None
    return RoutingIntent(
        req["model"], extract_requirements(body), tier_mode=mode, rng=random.Random(seed),
        circuits_open={f"b{i}": ("circuit open: test", 1.0) for i in req["open"]},
        usable_unhealthy=frozenset(f"b{i}" for i in req["usable"]),
    )


@settings(max_examples=300, deadline=None)
@given(backend_specs, policy_specs, budget_specs, requests)
def test_candidates_never_grow_and_every_exclusion_has_a_reason(specs, policies, budget, req):
    snap = build(specs, policies, budget)
    intent = intent_for(req)
    decision = decide(intent, snap, trace=True)
    remaining = [step.remaining for step in decision.trace]
    assert remaining == sorted(remaining, reverse=True)
    serving = {b.name for b in snap.by_model.get(intent.resolved_model, ())}
    assert remaining[0] <= len(serving)
    reasons_for = {r.agent_id for r in decision.reasons}
    assert set(intent.excluded) == reasons_for
    assert set(intent.excluded) <= serving
    survivors = {b.name for b in intent.candidates}
    assert survivors.isdisjoint(intent.excluded)
    assert survivors | set(intent.excluded) == serving
    if isinstance(decision, Route):
        assert {decision.backend.name, *(b.name for b in decision.alternatives)} == survivors


@settings(max_examples=200, deadline=None)
@given(backend_specs, policy_specs, budget_specs, requests, st.permutations(range(len(FILTER_RECONCILERS))))
def test_excluded_set_does_not_depend_on_filter_order(specs, policies, budget, req, order):
    snap = build(specs, policies, budget)
    reordered = (analyzer, *(FILTER_RECONCILERS[i] for i in order), scheduler)
    base_intent, other_intent = intent_for(req), intent_for(req)
    base = decide(base_intent, snap)
    other = decide(other_intent, snap, reconcilers=reordered)
    assert set(base_intent.excluded) == set(other_intent.excluded)
    assert type(base) is type(other)


@settings(max_examples=300, deadline=None)
@given(backend_specs, policy_specs, budget_specs, requests)
def test_restricted_decision_never_routes_or_fails_over_to_open_zone(specs, policies, budget, req):
    snap = build(specs, policies, budget)
    decision = decide(intent_for(req), snap)
    if decision.privacy_required is Zone.RESTRICTED:
        if isinstance(decision, Route):
            assert all(b.zone is Zone.RESTRICTED for b in decision.ordered)
        if isinstance(decision, Queue):
            assert all(b.zone is Zone.RESTRICTED for b in decision.candidates)
    policy = snap.policy_for(decision.model)
    if policy is not None and policy.privacy.value == "restricted" and not isinstance(decision, Reject):
        assert decision.privacy_required is Zone.RESTRICTED


@settings(max_examples=200, deadline=None)
@given(backend_specs, policy_specs, budget_specs, requests, st.integers(0, 2**32 - 1),
       st.sampled_from(["smart", "round_robin", "priority_only", "random"]))
def test_decisions_are_deterministic_for_snapshot_and_seed(specs, policies, budget, req, seed, strategy):
    snap = build(specs, policies, budget)
    snap = dataclasses.replace(snap, strategy=Strategy(strategy))
    first, second = decide(intent_for(req, seed), snap), decide(intent_for(req, seed), snap)
    assert type(first) is type(second)
    assert first.reasons == second.reasons
    if isinstance(first, Route):
        assert [b.name for b in first.ordered] == [b.name for b in second.ordered]

