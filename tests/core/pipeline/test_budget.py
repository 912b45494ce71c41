import pytest

from nexus.core.model import BudgetStatus
from nexus.core.pipeline import Reject, Route
from tests.core.pipeline.helpers import backend, chat, excluded_by, run, snapshot

NAME = "BudgetReconciler"
PAIR = [backend("cloud", "openai", priority=0, models=["gpt-4o"]),
        backend("local", "vllm", priority=3, models=["gpt-4o"])]


@pytest.mark.parametrize(
    ("spend", "status"),
    [
        pytest.param(0.0, BudgetStatus.NORMAL, id="zero"),
        pytest.param(74.99, BudgetStatus.NORMAL, id="just-below-soft"),
        pytest.param(75.0, BudgetStatus.SOFT_LIMIT, id="exactly-soft"),
        pytest.param(99.99, BudgetStatus.SOFT_LIMIT, id="just-below-hard"),
        pytest.param(100.0, BudgetStatus.HARD_LIMIT, id="exactly-hard"),
        pytest.param(250.0, BudgetStatus.HARD_LIMIT, id="past-hard"),
    ],
)
def test_status_thresholds(spend, status):
    snap = snapshot(PAIR, budget={"monthly_limit_usd": 100, "soft_limit_percent": 75}, spend={"global": spend})
    assert run(snap, "gpt-4o").budget_status is status


def test_no_limit_is_always_normal():
    snap = snapshot(PAIR, spend={"global": 1e9})
    assert run(snap, "gpt-4o").budget_status is BudgetStatus.NORMAL


@pytest.mark.parametrize(
    ("action", "outcome", "excluded"),
    [
        pytest.param("warn", "cloud", set(), id="warn"),
        pytest.param("block_cloud", "local", {"cloud"}, id="block_cloud"),
        pytest.param("block_all", None, {"cloud", "local"}, id="block_all"),
    ],
)
def test_hard_limit_actions(action, outcome, excluded):
    snap = snapshot(PAIR, budget={"monthly_limit_usd": 10, "hard_limit_action": action}, spend={"global": 10})
    decision = run(snap, "gpt-4o")
    assert excluded_by(decision, NAME) == excluded
    if outcome is None:
        assert isinstance(decision, Reject)
        assert {r.suggested_action for r in decision.reasons} == {
            "raise routing.budget.monthly_limit_usd (PUT /admin/v1/budgets/global), or wait for the next budget "
            "period"}
    else:
        assert isinstance(decision, Route)
        assert decision.backend.name == outcome
    if action == "warn":
        assert any("hard limit" in w for w in decision.warnings)


def test_block_cloud_excludes_open_zone_even_for_local_types():
    snap = snapshot([backend("shared-vllm", "vllm", zone="open"), backend("private", "vllm")],
                    budget={"monthly_limit_usd": 1, "hard_limit_action": "block_cloud"}, spend={"global": 5})
    decision = run(snap)
    assert excluded_by(decision, NAME) == {"shared-vllm"}


def test_soft_limit_prefers_local_over_better_scoring_cloud():
    snap = snapshot(PAIR, budget={"monthly_limit_usd": 100}, spend={"global": 80})
    decision = run(snap, "gpt-4o")
    assert decision.budget_status is BudgetStatus.SOFT_LIMIT
    assert decision.backend.name == "local"
    assert decision.route_reason == "budget_prefer_local"
    assert [b.name for b in decision.alternatives] == ["cloud"]
    normal = run(snapshot(PAIR, budget={"monthly_limit_usd": 100}, spend={"global": 10}), "gpt-4o")
    assert normal.backend.name == "cloud"  # priority 0 beats 3 when the budget is not a concern


# gpt-4o: $2.50 in / $10 out per 1M; "hello" is 2 tokens + 4 of framing = 6 input tokens
CAP = (6 * 2.5 + 1000 * 10.0) / 1e6


@pytest.mark.parametrize(
    ("max_tokens", "cloud_excluded"),
    [
        pytest.param(1000, False, id="estimate-equals-cap"),
        pytest.param(999, False, id="below-cap"),
        pytest.param(1001, True, id="above-cap"),
    ],
)
def test_max_cost_per_request(max_tokens, cloud_excluded):
    snap = snapshot(PAIR, policies=[{"model_pattern": "gpt-4o", "max_cost_per_request": CAP}])
    decision = run(snap, "gpt-4o", body=chat("hello", max_tokens=max_tokens))
    assert (excluded_by(decision, NAME) == {"cloud"}) is cloud_excluded
    assert "local" not in excluded_by(decision, NAME)  # local costs nothing
    if cloud_excluded:
        assert "max_cost_per_request" in decision.reasons[0].suggested_action


def test_cost_estimate_uses_prices_and_local_is_free():
    snap = snapshot(PAIR)
    decision = run(snap, "gpt-4o", body=chat("x" * 400, max_tokens=100))  # 100 + 4 input tokens
    assert decision.backend.name == "cloud"
    assert decision.cost_estimate == pytest.approx((104 * 2.5 + 100 * 10.0) / 1e6)
    local_only = run(snapshot([PAIR[1]]), "gpt-4o", body=chat("x" * 400, max_tokens=100))
    assert local_only.cost_estimate == 0.0


def test_key_budget_worse_than_global_governs():
    snap = snapshot(PAIR, budget={"monthly_limit_usd": 1000}, spend={"global": 1, "team-a": 50},
                    key_budgets={"team-a": {"monthly_limit_usd": 50, "hard_limit_action": "block_cloud"}})
    keyed = run(snap, "gpt-4o", api_key_id="team-a")
    assert keyed.budget_status is BudgetStatus.HARD_LIMIT
    assert keyed.backend.name == "local"
    assert "PUT /admin/v1/budgets/team-a" in keyed.reasons[0].suggested_action
    other = run(snap, "gpt-4o", api_key_id="team-b")
    assert other.budget_status is BudgetStatus.NORMAL
    assert other.backend.name == "cloud"
