"""nexus.core.fleet.discovery.reconcile: announcements -> discovered backends, static wins, grace, ignore, pin."""

from __future__ import annotations

from nexus.core.config import BackendConfig, DesiredConfig, DiscoveryConfig
from nexus.core.fleet.discovery import Announcement, SeenRecord, backend_for, reconcile
from nexus.core.model import BackendSource

CFG = DiscoveryConfig(enabled=True, grace_period_seconds=60)
OLLAMA = Announcement("_ollama._tcp.local.", "gpu-box", "10.1.2.3", 11434, {})


def test_an_ollama_announcement_is_a_restricted_ollama_backend_at_the_native_root():
    b = backend_for(Announcement("_ollama._tcp.local.", "gpu box!", "10.1.2.3", 11434, {"api_path": "/v1"}))
    assert (b.name, b.url, b.type, b.zone, b.source) == (
        "gpu-box", "http://10.1.2.3:11434", "ollama", "restricted", BackendSource.DISCOVERED
    )


def test_llm_announcements_honour_txt_type_and_api_path():
    b = backend_for(Announcement("_llm._tcp.local.", "v", "10.0.0.9", 8000, {"type": "VLLM", "api_path": "v1/"}))
    assert (b.type, b.url, b.zone) == ("vllm", "http://10.0.0.9:8000/v1", "restricted")
    generic = backend_for(Announcement("_llm._tcp.local.", "g", "10.0.0.9", 8001, {}))
    assert (generic.type, generic.zone) == ("generic", None)


def test_announcements_that_make_no_valid_backend_are_skipped_with_a_reason():
    bad = [Announcement("_llm._tcp.local.", "c", "10.0.0.1", 1, {"type": "openai"}),
           Announcement("_llm._tcp.local.", "q", "10.0.0.2", 2, {"api_path": "/v1?x=1"})]
    plan = reconcile(DesiredConfig(), bad, {}, set(), 100.0, CFG)
    assert plan.desired is None and len(plan.skipped) == 2 and "not a local server type" in plan.skipped[0]


def test_static_config_wins_for_the_same_url_and_names_never_collide():
    static = BackendConfig(name="gpu-box", url="http://10.1.2.3:11434/", type="ollama")
    other = BackendConfig(name="gpu-box-2", url="http://10.9.9.9:1")
    current = DesiredConfig(backends=[static, other])
    assert reconcile(current, [OLLAMA], {}, set(), 1.0, CFG).desired is None
    moved = Announcement("_ollama._tcp.local.", "gpu-box", "10.1.2.4", 11434, {})
    plan = reconcile(current, [moved], {}, set(), 1.0, CFG)
    assert plan.added == ("gpu-box-11434",) and plan.desired is not None
    assert [b.source for b in plan.desired.backends] == ["static", "static", "discovered"]


def test_a_vanished_backend_is_kept_for_the_grace_period_then_removed():
    first = reconcile(DesiredConfig(), [OLLAMA], {}, set(), 100.0, CFG)
    assert first.added == ("gpu-box",) and first.records["gpu-box"].last_seen == 100.0
    kept = reconcile(first.desired, [], first.records, set(), 160.0, CFG)
    assert kept.desired is None and kept.records["gpu-box"].last_seen == 100.0
    gone = reconcile(first.desired, [], first.records, set(), 160.5, CFG)
    assert gone.removed == ("gpu-box",) and gone.desired.backends == [] and gone.records == {}
    again = reconcile(first.desired, [OLLAMA], first.records, set(), 200.0, CFG)  # seen again: grace restarts
    assert again.desired is None and again.records["gpu-box"] == SeenRecord(
        "http://10.1.2.3:11434", "_ollama._tcp.local.", "gpu-box", 100.0, 200.0
    )


def test_ignored_urls_are_removed_and_not_written_back_and_pinned_ones_are_never_touched():
    first = reconcile(DesiredConfig(), [OLLAMA], {}, set(), 1.0, CFG).desired
    ignored = reconcile(first, [OLLAMA], {}, {"http://10.1.2.3:11434"}, 2.0, CFG)
    assert ignored.desired.backends == [] and "ignored" in ignored.skipped[0]
    pinned = DesiredConfig(backends=[first.backends[0].model_copy(update={"source": BackendSource.STATIC})])
    assert reconcile(pinned, [], {}, set(), 10_000.0, CFG).desired is None


def test_operator_edits_of_a_discovered_backend_survive_and_the_count_is_bounded():
    first = reconcile(DesiredConfig(), [OLLAMA], {}, set(), 1.0, CFG)
    edited = DesiredConfig(backends=[first.desired.backends[0].model_copy(update={"tier": 4})])
    assert reconcile(edited, [OLLAMA], first.records, set(), 2.0, CFG).desired is None
    many = [Announcement("_llm._tcp.local.", f"s{i}", "10.0.0.1", 1000 + i, {}) for i in range(5)]
    plan = reconcile(DesiredConfig(), many, {}, set(), 1.0, DiscoveryConfig(max_backends=3))
    assert len(plan.desired.backends) == 3 and len(plan.skipped) == 2


def test_announced_addresses_outside_the_allowed_networks_are_skipped():
    public = Announcement("_ollama._tcp.local.", "evil", "8.8.8.8", 11434, {})
    plan = reconcile(DesiredConfig(), [public, OLLAMA], {}, set(), 1.0, CFG)
    assert plan.added == ("gpu-box",) and "outside discovery.allowed_networks" in plan.skipped[0]
    opened = DiscoveryConfig(allowed_networks=["8.8.8.0/24"])
    assert reconcile(DesiredConfig(), [public, OLLAMA], {}, set(), 1.0, opened).added == ("evil",)
