import random

import pytest

from nexus.core.model import HealthState
from nexus.core.pipeline import Queue, Route
from tests.core.pipeline.helpers import backend, run, snapshot


def test_tie_breaks_by_name_whatever_the_declaration_order():
    for names in (["b", "a", "c"], ["c", "b", "a"]):
        decision = run(snapshot([backend(n) for n in names]))
        assert decision.backend.name == "a"
        assert [b.name for b in decision.alternatives] == ["b", "c"]


@pytest.mark.parametrize(
    ("kw_a", "kw_b", "winner"),
    [
        pytest.param({"priority": 0}, {"priority": 5}, "a", id="priority"),
        pytest.param({"priority": 5}, {"priority": 0}, "b", id="priority-reversed"),
    ],
)
def test_priority_orders(kw_a, kw_b, winner):
    assert run(snapshot([backend("a", **kw_a), backend("b", **kw_b)])).backend.name == winner


def test_cluster_load_shifts_traffic():
    snap = snapshot([backend("a", max_concurrency=10), backend("b", max_concurrency=10)], inflight={"a": 8})
    assert run(snap).backend.name == "b"
    # the caller's live load view overrides the snapshot's
    assert run(snap, load={"b": 9}).backend.name == "a"


def test_latency_ema_prefers_faster():
    snap = snapshot([backend("a"), backend("b")], latency={"a": 900.0, "b": 20.0})
    decision = run(snap)
    assert decision.backend.name == "b"
    assert decision.scores["b"] > decision.scores["a"]


def test_backend_at_capacity_is_skipped_and_kept_last():
    snap = snapshot([backend("a", max_concurrency=2), backend("b", priority=9)], inflight={"a": 2})
    decision = run(snap)
    assert decision.backend.name == "b"
    assert [x.name for x in decision.alternatives] == ["a"]


def test_all_at_capacity_queues():
    snap = snapshot([backend("a", max_concurrency=1), backend("b", max_concurrency=3)], inflight={"a": 1, "b": 3})
    decision = run(snap)
    assert isinstance(decision, Queue)
    assert "max_concurrency" in decision.reason
    assert {b.name for b in decision.candidates} == {"a", "b"}


def test_loading_best_candidate_queues():
    snap = snapshot([backend("a", priority=0), backend("b", priority=5)], health={"a": HealthState.LOADING})
    decision = run(snap)
    assert isinstance(decision, Queue)
    assert "loading" in decision.reason


def test_loading_candidate_that_is_not_best_does_not_queue():
    snap = snapshot([backend("a", priority=5), backend("b", priority=0)], health={"a": HealthState.LOADING})
    assert isinstance(run(snap), Route)


def test_priority_only_ignores_load():
    snap = snapshot(
        [backend("a", priority=0, max_concurrency=10), backend("b", priority=1)],
        inflight={"a": 9},
        strategy="priority_only",
    )
    decision = run(snap)
    assert decision.backend.name == "a"
    assert decision.route_reason == "priority"


def test_round_robin_rotates_by_sequence():
    snap = snapshot([backend(n) for n in "abc"], strategy="round_robin")
    picks = [run(snap, sequence=i).backend.name for i in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_random_is_deterministic_for_a_seed_and_covers_candidates():
    snap = snapshot([backend(n) for n in "abcd"], strategy="random")
    first = [run(snap, rng=random.Random(7)).backend.name for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same pick
    rng = random.Random(7)
    picks = {run(snap, rng=rng).backend.name for _ in range(200)}
    assert picks == set("abcd")


def test_only_candidate_reason():
    assert run(snapshot([backend("solo")])).route_reason == "only_candidate"


def test_backends_failing_on_this_node_are_tried_last_not_excluded():
    snap = snapshot([backend("a", priority=0), backend("b", priority=5), backend("c", priority=9)])
    decision = run(snap, failing_here=frozenset({"a"}))
    assert [x.name for x in decision.ordered] == ["b", "c", "a"]
    assert decision.route_reason == "passive_health"
    assert decision.reasons == ()


def test_when_every_candidate_is_failing_here_the_order_stands():
    snap = snapshot([backend("a", priority=0), backend("b", priority=5)])
    decision = run(snap, failing_here=frozenset({"a", "b"}))
    assert [x.name for x in decision.ordered] == ["a", "b"]
