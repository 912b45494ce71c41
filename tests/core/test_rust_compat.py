"""Rust Nexus's nexus.toml loads: its sections and documented keys, `type = "exo"`, negative priorities,
`error_rate_threshold = 0.0`, and a cloud backend whose key variable is unset (kept, excluded with a reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.core.config import load_settings
from nexus.core.errors import ConfigError
from nexus.core.model import BackendType, QualityStats, Zone
from nexus.core.pipeline import Route, RoutingIntent, decide, explain, extract_requirements
from nexus.core.snapshot import Observed, build_snapshot
from tests.core.pipeline.helpers import backend, snapshot

FIXTURE = Path(__file__).with_name("fixtures") / "rust_nexus.toml"
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def _decide(settings):
    snap = build_snapshot(settings.desired(), Observed(), version=1, now=1000.0, quality=settings.quality,
                          missing_keys=settings.missing_keys)
    return decide(RoutingIntent("gpt-4", extract_requirements(CHAT)), snap, trace=True)


def test_rust_example_loads_with_its_keys():
    s = load_settings(FIXTURE, environ={})
    assert (s.queue.max_size, s.queue.max_wait_seconds) == (50, 20.0)
    assert s.quality.enabled and s.quality.error_rate_threshold == 0.0
    assert s.logging.format == "json" and s.logging.component_levels == {"routing": "debug", "api": "info",
                                                                         "health": "warn"}
    assert s.logging.enable_content_logging is False
    by_name = {b.name: b for b in s.backends}
    assert by_name["mac-cluster"].type is BackendType.EXO and by_name["mac-cluster"].priority == -5
    assert s.routing.aliases["gpt-4"] == "llama3:70b"
    assert s.missing_keys == {"OPENAI_API_KEY": "API key variable OPENAI_API_KEY is not set"}
    # its service types without the trailing dot, which Rust Nexus adds itself
    assert s.discovery.enabled and s.discovery.service_types == ["_ollama._tcp.local.", "_llm._tcp.local."]


def test_unset_key_is_kept_and_excluded_with_the_reason():
    s = load_settings(FIXTURE, environ={})
    decision = _decide(s)
    assert isinstance(decision, Route)
    # the negative priority ranks first; the keyless cloud backend is excluded, not dropped from the config
    assert decision.backend.name == "mac-cluster"
    doc = explain(decision)
    reasons = [r for r in decision.reasons if r.agent_id == "openai-cloud"]
    assert [r.reason for r in reasons] == ["API key variable OPENAI_API_KEY is not set"]
    assert "API key variable OPENAI_API_KEY is not set" in str(doc)
    with_key = _decide(load_settings(FIXTURE, environ={"OPENAI_API_KEY": "sk-x"}))
    assert not [r for r in with_key.reasons if r.agent_id == "openai-cloud"]


def test_exo_is_a_local_restricted_type():
    snap = snapshot([backend("e", type="exo")])
    assert snap.backends["e"].is_local and snap.backends["e"].zone is Zone.RESTRICTED


def test_negative_priorities_order_before_zero():
    snap = snapshot([backend("zero", priority=0), backend("neg", priority=-3), backend("neg1", priority=-1)],
                    strategy="smart")
    scores = snap.static_scores
    assert scores["neg"] > scores["neg1"] > scores["zero"]
    d = decide(RoutingIntent("m", extract_requirements({"model": "m", "messages": []})), snap)
    assert d.backend.name == "neg"


@pytest.mark.parametrize(("rate", "excluded"), [(0.0, False), (0.01, True)])
def test_zero_error_threshold_excludes_any_error(rate, excluded):
    s = load_settings(None, environ={}, overrides={"quality": {"error_rate_threshold": 0.0, "min_requests": 1}})
    from nexus.core.config import DesiredConfig

    desired = DesiredConfig(backends=[backend("a"), backend("b")])
    q = QualityStats(error_rate_1h=rate, avg_ttfb_ms_1h=10.0, requests_1h=100)
    snap = build_snapshot(desired, Observed(quality={"a": q}), version=1, now=1000.0, quality=s.quality)
    assert ("a" in snap.failing) is excluded


def test_quality_disabled_has_no_say():
    s = load_settings(None, environ={}, overrides={"quality": {"enabled": False, "min_requests": 1}})
    from nexus.core.config import DesiredConfig

    desired = DesiredConfig(backends=[backend("a")])
    q = QualityStats(error_rate_1h=0.9, avg_ttfb_ms_1h=99999.0, requests_1h=100)
    snap = build_snapshot(desired, Observed(quality={"a": q}), version=1, now=1000.0, quality=s.quality)
    assert not snap.failing and not snap.slow


@pytest.mark.parametrize(
    ("section", "hint"),
    [("helth_check", "did you mean [health_check]?"), ("loging", "did you mean [logging]?"),
     ("zzz", "known sections:")],
)
def test_unknown_section_is_an_error_with_a_hint(tmp_path, section, hint):
    path = tmp_path / "nexus.toml"
    path.write_text(f"[{section}]\nenabled = true\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert f"unknown section [{section}]" in str(err.value) and hint in str(err.value)
