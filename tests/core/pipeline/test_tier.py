import pytest

from nexus.core.model import TierMode
from nexus.core.pipeline import Reject, Route
from tests.core.pipeline.helpers import backend, excluded_by, run, snapshot

NAME = "TierReconciler"
TIER3 = [{"model_pattern": "m", "min_tier": 3}]


@pytest.mark.parametrize("mode", [None, TierMode.STRICT], ids=["default", "strict-header"])
def test_strict_excludes_lower_tiers(mode):
    snap = snapshot([backend("t1", tier=1), backend("t3", tier=3), backend("t5", tier=5)], policies=TIER3)
    decision = run(snap, tier_mode=mode)
    assert excluded_by(decision, NAME) == {"t1"}
    assert {decision.backend.name, *(b.name for b in decision.alternatives)} == {"t3", "t5"}
    assert "X-Nexus-Flexible" in decision.reasons[0].suggested_action


def test_strict_with_nothing_at_tier_rejects_with_required_tier():
    decision = run(snapshot([backend("t1", tier=1), backend("t2", tier=2)], policies=TIER3))
    assert isinstance(decision, Reject)
    assert decision.required_tier == 3
    assert excluded_by(decision, NAME) == {"t1", "t2"}


def test_flexible_downgrades_only_when_nothing_meets_the_tier():
    snap = snapshot([backend("t1", tier=1), backend("t2", tier=2)], policies=TIER3)
    decision = run(snap, tier_mode=TierMode.FLEXIBLE)
    assert isinstance(decision, Route)
    assert decision.reasons == ()
    assert any("tier downgrade" in w and "tier 3" in w for w in decision.warnings)


def test_flexible_keeps_to_the_tier_when_a_backend_meets_it():
    snap = snapshot([backend("t1", tier=1, priority=0), backend("t4", tier=4, priority=9)], policies=TIER3)
    decision = run(snap, tier_mode=TierMode.FLEXIBLE)
    assert decision.backend.name == "t4"
    assert decision.alternatives == ()
    assert decision.warnings == ()
    assert {r.agent_id for r in decision.reasons} == {"t1"}


def test_flexible_downgrade_considers_only_backends_other_constraints_left():
    # the only tier-3 backend is cloud and the policy is restricted: flexible routes to the local tier-1
    policies = [{"model_pattern": "m", "min_tier": 3, "privacy": "restricted"}]
    snap = snapshot([backend("cloud-t3", "openai", tier=3), backend("local-t1", "vllm", tier=1)], policies=policies)
    decision = run(snap, tier_mode=TierMode.FLEXIBLE)
    assert decision.backend.name == "local-t1"
    assert decision.warnings


def test_no_policy_or_no_min_tier_excludes_nothing():
    snap = snapshot([backend("t1", tier=1)], policies=[{"model_pattern": "m", "privacy": "unrestricted"}])
    assert isinstance(run(snap), Route)
    assert isinstance(run(snapshot([backend("t1", tier=1)])), Route)
