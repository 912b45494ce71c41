"""Tenant constraints in the pipeline: allowed models, forced privacy, max tier, priority, team budgets."""

from __future__ import annotations

from nexus.core.config import BudgetConfig, DesiredConfig, RoutingConfig
from nexus.core.model import BudgetStatus, Zone
from nexus.core.pipeline import Queue, Reject, Route
from nexus.core.snapshot import BudgetObservation, Observed, build_snapshot
from nexus.core.tenancy import KeyConfig, TeamConfig, build_tenants, sha256_digest
from tests.core.pipeline.helpers import backend, excluded_by, run, snapshot

KID = "key_00000000000a"


def tenant(team: TeamConfig | None = None, **limits):
    key = KeyConfig(id=KID, name="app", digest=sha256_digest("k"), team=team.name if team else None, **limits)
    return build_tenants([key], [team] if team else []).by_id[KID]


def test_a_model_outside_the_keys_globs_is_not_found_for_that_key():
    snap = snapshot([backend("a", models=["llama3", "gpt-4o"])])
    t = tenant(models=["llama*"])
    assert isinstance(run(snap, "llama3", tenant=t), Route)
    d = run(snap, "gpt-4o", tenant=t)
    assert isinstance(d, Reject) and d.not_found
    assert excluded_by(d, "TenantReconciler") == {"a"}
    assert "not in the models allowed for key " + KID in d.reasons[0].reason


def test_the_model_must_fit_the_teams_list_too():
    team = TeamConfig(name="t", models=["gpt-*"])
    snap = snapshot([backend("a", models=["llama3", "gpt-4o"])])
    t = tenant(team, models=["*"])
    assert isinstance(run(snap, "gpt-4o", tenant=t), Route)
    d = run(snap, "llama3", tenant=t)
    assert isinstance(d, Reject) and d.not_found and "team t" in d.reasons[0].reason


def test_a_restricted_key_never_reaches_an_open_backend_whatever_the_policy():
    snap = snapshot([backend("cloud", "openai"), backend("local", zone="open")])
    d = run(snap, tenant=tenant(privacy="restricted"))
    assert isinstance(d, Reject) and not d.not_found and d.privacy_required is Zone.RESTRICTED
    assert excluded_by(d, "PrivacyReconciler") == {"cloud", "local"}
    assert all(f"key {KID} requires restricted" in r.reason for r in d.reasons)
    both = snapshot([backend("cloud", "openai"), backend("gpu")])
    routed = run(both, tenant=tenant(privacy="restricted"))
    assert isinstance(routed, Route) and routed.backend.name == "gpu" and routed.alternatives == ()


def test_max_tier_excludes_higher_tiers_and_the_lower_of_key_and_team_wins():
    snap = snapshot([backend("t1", tier=1), backend("t3", tier=3), backend("t5", tier=5)])
    d = run(snap, tenant=tenant(max_tier=3))
    assert isinstance(d, Route) and excluded_by(d, "TenantReconciler") == {"t5"}
    d = run(snap, tenant=tenant(TeamConfig(name="t", max_tier=1), max_tier=3))
    assert excluded_by(d, "TenantReconciler") == {"t3", "t5"} and "team t" in d.reasons[0].reason


def test_the_keys_priority_is_what_its_queued_requests_wait_with():
    snap = snapshot([backend("a", max_concurrency=1)], inflight={"a": 1})
    d = run(snap, priority="high", tenant=tenant(priority="normal"))
    assert isinstance(d, Queue) and d.priority == "normal"
    d = run(snap, priority="normal", tenant=tenant(priority="high"))
    assert isinstance(d, Queue) and d.priority == "high"
    assert run(snap, priority="high").priority == "high"  # no key: the header's


def test_a_team_budget_at_its_hard_limit_blocks_the_keys_of_the_team():
    team = TeamConfig(name="t", budget={"monthly_limit_usd": 1.0, "hard_limit_action": "block_cloud"})
    key = KeyConfig(id=KID, name="app", digest=sha256_digest("k"), team="t")
    desired = DesiredConfig(backends=[backend("cloud", "openai", secret="TEST_KEY")], routing=RoutingConfig(),
                            keys=[key], teams=[team])
    assert set(desired.budgets()) == {"global", "team:t"}
    assert desired.budgets()["team:t"] == BudgetConfig(monthly_limit_usd=1.0, hard_limit_action="block_cloud")
    now = 1000.0
    period = desired.calendar().period("team:t", now)
    snap = build_snapshot(desired, Observed(spend={"team:t": BudgetObservation(1.0, period)}), version=1, now=now)
    t = build_tenants([key], [team]).by_id[KID]
    d = run(snap, tenant=t)
    assert isinstance(d, Reject) and d.budget_status is BudgetStatus.HARD_LIMIT and d.budget_scope == "team:t"
    assert "PUT /admin/v1/teams/t" in d.reasons[0].suggested_action


def test_a_refused_team_lease_blocks_though_the_snapshot_and_the_global_budget_show_room():
    # the global budget has no limit and the team's spend in the snapshot is far below its limit: only the
    # refused lease (another replica holds the rest) says the team is out of room, and that must govern
    team = TeamConfig(name="t", budget={"monthly_limit_usd": 1.0, "hard_limit_action": "block_all"})
    key = KeyConfig(id=KID, name="app", digest=sha256_digest("k"), team="t")
    desired = DesiredConfig(backends=[backend("cloud", "openai", secret="TEST_KEY")], routing=RoutingConfig(),
                            keys=[key], teams=[team])
    now = 1000.0
    period = desired.calendar().period("team:t", now)
    snap = build_snapshot(desired, Observed(spend={"team:t": BudgetObservation(0.2, period)}), version=1, now=now)
    t = build_tenants([key], [team]).by_id[KID]
    assert isinstance(run(snap, tenant=t, api_key_id=KID), Route)
    d = run(snap, tenant=t, api_key_id=KID, budget_exhausted=True)
    assert isinstance(d, Reject) and d.budget_status is BudgetStatus.HARD_LIMIT and d.budget_scope == "team:t"
