import pytest

from nexus.core.config import load_settings
from nexus.core.errors import ConfigError
from nexus.core.model import HealthState
from nexus.core.pipeline import Reject, Route
from tests.core.pipeline.helpers import backend, chat, excluded_by, run, snapshot

NAME = "RequestAnalyzer"


@pytest.mark.parametrize(
    ("aliases", "requested", "resolved"),
    [
        pytest.param({"a": "m"}, "a", "m", id="one-hop"),
        pytest.param({"a": "b", "b": "c", "c": "m"}, "a", "m", id="three-hops"),
        pytest.param({}, "m", "m", id="no-alias"),
    ],
)
def test_alias_chains_resolve(aliases, requested, resolved):
    decision = run(snapshot([backend("gpu")], aliases=aliases), requested)
    assert isinstance(decision, Route)
    assert decision.model == resolved
    assert decision.requested_model == requested


def test_four_hop_alias_chain_is_an_error_at_decision_time():
    aliases = {"a": "b", "b": "c", "c": "d", "d": "m"}
    decision = run(snapshot([backend("gpu")], aliases=aliases, validate=False), "a")
    assert isinstance(decision, Reject)
    assert not decision.not_found
    assert "exceeds 3 hops" in decision.error


def test_alias_cycle_is_an_error_at_decision_time_when_config_was_not_validated():
    decision = run(snapshot([backend("gpu")], aliases={"a": "b", "b": "a"}, validate=False), "a")
    assert isinstance(decision, Reject)
    assert "cycle" in decision.error


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        pytest.param({"a": "b", "b": "a"}, "alias cycle a -> b -> a", id="cycle"),
        pytest.param({"a": "a"}, "alias cycle a -> a", id="self-cycle"),
        pytest.param({"a": "b", "b": "c", "c": "d", "d": "m"}, "has 4 hops", id="four-hops"),
    ],
)
def test_bad_alias_chains_are_rejected_at_load(aliases, message):
    with pytest.raises(ConfigError) as err:
        load_settings(overrides={"routing": {"aliases": aliases}}, environ={})
    assert "routing.aliases" in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("body", "model_spec", "reason_part"),
    [
        pytest.param(
            chat(messages=[{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
            {"vision": False}, "does not accept images", id="vision"),
        pytest.param(chat(tools=[{"type": "function", "function": {"name": "f"}}]), {"tools": False},
                     "does not support tools", id="tools"),
        pytest.param(chat(response_format={"type": "json_object"}), {"json_mode": False},
                     "does not support JSON mode", id="json-mode"),
        pytest.param(chat("x" * 4000), {"context_length": 512}, "context length is 512", id="context-input"),
        pytest.param(chat("short", max_tokens=600), {"context_length": 512}, "context length is 512",
                     id="context-max-tokens"),
    ],
)
def test_capability_exclusions(body, model_spec, reason_part):
    snap = snapshot([backend("lacking", models=[{"name": "m", **model_spec}]),
                     backend("capable", models=[{"name": "m", "vision": True, "context_length": 100_000}])])
    decision = run(snap, body=body)
    assert isinstance(decision, Route)
    assert decision.backend.name == "capable"
    [reason] = [r for r in decision.reasons if r.agent_id == "lacking"]
    assert reason.reconciler == NAME
    assert reason_part in reason.reason


def test_context_length_exactly_fits():
    # 4 tokens of framing + ceil(len/4) of text; max_tokens adds to it
    snap = snapshot([backend("gpu", models=[{"name": "m", "context_length": 14}])])
    assert isinstance(run(snap, body=chat("x" * 40)), Route)  # 10 + 4 == 14
    assert isinstance(run(snap, body=chat("x" * 41)), Reject)  # 11 + 4 == 15


def test_unhealthy_backends_are_excluded_unknown_pass():
    snap = snapshot([backend("down"), backend("fresh"), backend("up")],
                    health={"down": HealthState.UNHEALTHY, "up": HealthState.HEALTHY})
    decision = run(snap)
    assert excluded_by(decision, NAME) == {"down"}
    assert {decision.backend.name, *(b.name for b in decision.alternatives)} == {"fresh", "up"}


def test_unknown_model_is_not_found():
    decision = run(snapshot([backend("gpu")]), "nope")
    assert isinstance(decision, Reject)
    assert decision.not_found
    assert decision.reasons == ()


def test_known_model_with_every_backend_excluded_is_not_not_found():
    snap = snapshot([backend("gpu")], health={"gpu": HealthState.UNHEALTHY})
    decision = run(snap)
    assert isinstance(decision, Reject)
    assert not decision.not_found


def test_exact_fit_on_a_backend_checked_one_by_one():
    # two context lengths: no shortcut over the whole model, each backend is checked against its own
    snap = snapshot([backend("big", models=[{"name": "m", "context_length": 14}]),
                     backend("small", models=[{"name": "m", "context_length": 13}])])
    decision = run(snap, body=chat("x" * 40))  # 10 + 4 == 14 tokens
    assert isinstance(decision, Route) and decision.backend.name == "big"
    [reason] = decision.reasons
    assert reason.as_dict() == {
        "agent_id": "small",
        "reconciler": NAME,
        "reason": "request needs about 14 tokens; context length is 13",
        "suggested_action": "shorten the conversation or lower max_tokens, or use a model with a longer context",
    }


@pytest.mark.parametrize(
    ("body", "spec", "reason", "action"),
    [
        pytest.param(chat(tools=[{"type": "function"}]), {"tools": False},
                     "model m on this backend does not support tools",
                     "send the request without tools, or use a backend whose model supports tools", id="tools"),
        pytest.param(chat(response_format={"type": "json_schema"}), {"json_mode": False},
                     "model m on this backend does not support JSON mode",
                     "drop response_format, or use a backend whose model supports json_mode", id="json"),
        pytest.param(chat(messages=[{"role": "user", "content": [{"type": "image"}]}]), {"vision": False},
                     "model m on this backend does not accept images",
                     "send the request without image parts, or declare vision = true for m on a backend that "
                     "supports it", id="vision"),
    ],
)
def test_capability_reasons_say_what_and_how(body, spec, reason, action):
    snap = snapshot([backend("lacking", models=[{"name": "m", **spec}]),
                     backend("capable", models=[{"name": "m", "vision": True}])])
    [r] = run(snap, body=body).reasons
    assert (r.agent_id, r.reason, r.suggested_action) == ("lacking", reason, action)


def test_an_unhealthy_backend_is_named_with_where_to_look():
    snap = snapshot([backend("down"), backend("up")], health={"down": HealthState.UNHEALTHY})
    [r] = run(snap).reasons
    assert r.reason == "backend is unhealthy (failing health checks)"
    # named, not by URL (a URL may carry credentials): issue 12
    assert r.suggested_action == "check backend down; it is re-admitted after its health checks recover"
