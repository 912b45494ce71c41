import pytest

from nexus.core.adapters import zone_for
from nexus.core.model import Zone
from nexus.core.pipeline import Reject, Route
from tests.core.pipeline.helpers import backend, excluded_by, raw_backend, run, snapshot

NAME = "PrivacyReconciler"
LOCAL = ["ollama", "vllm", "llamacpp", "lmstudio"]
CLOUD = ["openai", "anthropic", "google", "generic"]


@pytest.mark.parametrize("btype", LOCAL)
def test_local_types_default_to_restricted(btype):
    assert zone_for(btype, None) is Zone.RESTRICTED


@pytest.mark.parametrize("btype", CLOUD)
def test_cloud_types_and_generic_default_to_open(btype):
    assert zone_for(btype, None) is Zone.OPEN


@pytest.mark.parametrize(
    ("btype", "zone", "expected"),
    [
        pytest.param("vllm", "open", Zone.OPEN, id="local-made-open"),
        pytest.param("openai", "restricted", Zone.RESTRICTED, id="cloud-made-restricted"),
        pytest.param("generic", "RESTRICTED", Zone.RESTRICTED, id="any-case"),
        pytest.param("vllm", "mystery", Zone.OPEN, id="unknown-zone-is-open"),
        pytest.param("spaceship", None, Zone.OPEN, id="unknown-type-is-open"),
    ],
)
def test_explicit_zone_wins_and_unknown_is_open(btype, zone, expected):
    assert zone_for(btype, zone) is expected


RESTRICT_M = [{"model_pattern": "m", "privacy": "restricted"}]


def test_restricted_policy_with_only_cloud_backends_rejects_naming_privacy_for_each():
    snap = snapshot([backend("oa", "openai"), backend("an", "anthropic"), backend("gen", "generic")],
                    policies=RESTRICT_M)
    decision = run(snap)
    assert isinstance(decision, Reject)
    assert not decision.not_found
    assert decision.privacy_required is Zone.RESTRICTED
    assert excluded_by(decision, NAME) == {"oa", "an", "gen"}
    assert all(r.reconciler == NAME and "restricted" in r.suggested_action for r in decision.reasons)


def test_restricted_routes_only_to_restricted_zone():
    snap = snapshot([backend("cloud", "openai", priority=0), backend("local", "ollama", priority=5)],
                    policies=RESTRICT_M)
    decision = run(snap)
    assert isinstance(decision, Route)
    assert decision.backend.name == "local"
    assert decision.alternatives == ()


def test_explicit_zone_overrides_type_default_in_routing():
    snap = snapshot([backend("box", "vllm", zone="open"), backend("vpc", "openai", zone="restricted")],
                    policies=RESTRICT_M)
    decision = run(snap)
    assert decision.backend.name == "vpc"
    assert excluded_by(decision, NAME) == {"box"}


def test_unknown_zone_from_storage_is_treated_as_open():
    snap = snapshot([raw_backend("odd", zone="mystery"), backend("ok", "vllm")], policies=RESTRICT_M)
    decision = run(snap)
    assert excluded_by(decision, NAME) == {"odd"}


@pytest.mark.parametrize("reverse", [False, True], ids=["specific-last", "specific-first"])
def test_most_specific_policy_wins_regardless_of_order(reverse):
    policies = [{"model_pattern": "gpt-*", "privacy": "unrestricted"},
                {"model_pattern": "gpt-4*", "privacy": "restricted"}]
    if reverse:
        policies.reverse()
    snap = snapshot([backend("cloud", "openai", models=["gpt-4o"]), backend("local", "vllm", models=["gpt-4o"])],
                    policies=policies)
    decision = run(snap, "gpt-4o")
    assert decision.policy.model_pattern == "gpt-4*"
    assert excluded_by(decision, NAME) == {"cloud"}


def test_equal_specificity_goes_to_first_declared():
    policies = [{"model_pattern": "gpt-?o", "privacy": "restricted"},
                {"model_pattern": "gpt-4?", "privacy": "unrestricted"}]
    snap = snapshot([backend("cloud", "openai", models=["gpt-4o"])], policies=policies)
    decision = run(snap, "gpt-4o")
    assert decision.policy.model_pattern == "gpt-?o"
    assert isinstance(decision, Reject)


def test_policy_matches_resolved_model_not_alias():
    snap = snapshot([backend("cloud", "openai", models=["secret-model"])], aliases={"friendly": "secret-model"},
                    policies=[{"model_pattern": "secret-*", "privacy": "restricted"}])
    decision = run(snap, "friendly")
    assert isinstance(decision, Reject)
    assert excluded_by(decision, NAME) == {"cloud"}


def test_unrestricted_policy_excludes_nothing():
    snap = snapshot([backend("cloud", "openai"), backend("local", "vllm")],
                    policies=[{"model_pattern": "*", "privacy": "unrestricted"}])
    assert excluded_by(run(snap), NAME) == set()


def test_preset_restriction_holds_for_a_model_without_a_restricted_policy():
    # a fallback after a restricted decision: the fallback model's own policy is unrestricted
    snap = snapshot([backend("cloud", "openai", models=["fb"]), backend("local", "vllm", models=["fb"], priority=9)],
                    policies=[{"model_pattern": "fb", "privacy": "unrestricted"}])
    decision = run(snap, "fb", privacy_required=Zone.RESTRICTED)
    assert decision.backend.name == "local"
    assert excluded_by(decision, NAME) == {"cloud"}
    assert "falls back from" in decision.reasons[0].reason
