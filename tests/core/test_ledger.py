"""The spend ledger (nexus.core.ledger): its amounts, and the budget guarantee admission gives.

The property test runs several router nodes' ledgers against a model of Redis's lease script (its rule is
nexus.core.reservations': grant min(wanted, limit - spend - every lease), refuse below what is needed; the
script itself is tested against a real Redis in test_reservations.py). Whatever the interleaving of
admissions, records, reads and returns, committed spend (recorded + admitted and not yet recorded) never
passes the hard limit, and each node's ledger agrees with the cluster about its own lease.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.core.ledger import EPSILON, LEASE_SHARE, ROOM_SHARE, LeaseRequest, Ledger

P = "2026-12"
G = (("global", P),)  # a lease under the global scope only
GK = (("global", P), ("k1", P))  # under the global scope and API key k1's


# -- readable cases ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("held", "estimate", "admitted", "left"),
    [
        pytest.param(1.0, 0.4, True, 0.6, id="from-the-lease"),
        pytest.param(0.4, 0.4, True, 0.0, id="exactly-the-lease"),
        pytest.param(0.3, 0.4, False, 0.3, id="short-lease-refused"),
        pytest.param(0.0, 0.01, False, 0.0, id="no-lease-refused"),
    ],
)
def test_take_admits_only_against_lease_held(held: float, estimate: float, admitted: bool, left: float) -> None:
    ledger = Ledger().granted(G, held) if held else Ledger()
    after = ledger.take(G, estimate)
    assert (after is not None) is admitted
    assert (after or ledger).available(G) == pytest.approx(left)
    # taking from the lease moves no spend: the amount stays reserved until the request's record releases it
    assert (after or ledger).spend("global") == pytest.approx(held)


@pytest.mark.parametrize(
    ("limit", "room", "estimate", "held", "want", "need"),
    [
        pytest.param(100.0, 100.0, 0.01, 0.0, 100.0 * LEASE_SHARE, 0.01, id="far-from-limit: share of the limit"),
        pytest.param(100.0, 2.0, 0.01, 0.0, 2.0 * ROOM_SHARE, 0.01, id="near-limit: share of the room"),
        pytest.param(100.0, 0.01, 0.4, 0.0, 0.4, 0.4, id="never-below-the-estimate"),
        pytest.param(100.0, -5.0, 0.2, 0.0, 0.2, 0.2, id="overspent-room-counts-as-none"),
        pytest.param(100.0, 100.0, 0.5, 0.3, 2.0, pytest.approx(0.2), id="need-only-what-is-missing"),
    ],
)
def test_lease_request_sizes_a_renewal(limit, room, estimate, held, want, need) -> None:
    ledger = Ledger().granted(G, held) if held else Ledger()
    ask = ledger.lease_request([("global", limit, P)], estimate, room)
    assert ask == LeaseRequest(G, pytest.approx(want), need)


def test_lease_request_is_sized_by_the_smallest_limit_of_its_scopes() -> None:
    ask = Ledger().lease_request([("global", 1000.0, P), ("k1", 10.0, P)], 0.01, 1000.0)
    assert ask.key == GK and ask.want == pytest.approx(10.0 * LEASE_SHARE)


def test_a_record_moves_cost_to_pending_and_releases_its_reservation() -> None:
    ledger = Ledger().read({"global": P, "k1": P}, {"global": 5.0}, {"global": 1.0, "k1": 1.0})
    ledger = ledger.recorded(("global", "k1"), 0.3, released=0.4, released_scopes=("global", "k1"))
    assert ledger.pending == {"global": 0.3, "k1": 0.3}
    assert ledger.reserved == {"global": pytest.approx(0.6), "k1": pytest.approx(0.6)}
    assert ledger.spend("global") == pytest.approx(5.0 + 0.3 + 0.6)
    # the next read includes the record: it stops being pending, and the read's amounts replace the old
    ledger = ledger.unrecorded(("global", "k1"), 0.3).read({"global": P}, {"global": 5.3}, {"global": 0.6})
    assert ledger.pending == {} and ledger.spend("global") == pytest.approx(5.9)


def test_a_reservation_released_beyond_what_was_read_floors_at_zero() -> None:
    ledger = Ledger().recorded(("global",), 0.0, released=0.5, released_scopes=("global",))
    assert ledger.reserved == {"global": 0.0} and ledger.spend("global") == 0.0


def test_committed_is_spend_less_the_nodes_own_unused_lease() -> None:
    ledger = Ledger().read({"global": P}, {"global": 2.0}, {"global": 0.5}).granted(GK, 1.0)
    assert ledger.spend("global") == pytest.approx(3.5)  # 2 spent, 0.5 leased elsewhere, 1 leased here
    assert ledger.leased("global") == 1.0 and ledger.leased("k1") == 1.0 and ledger.leased("k2") == 0.0
    assert ledger.committed("global") == pytest.approx(2.5)
    taken = ledger.take(GK, 0.25)
    assert taken is not None and taken.committed("global") == pytest.approx(2.75)


def test_a_lease_given_back_stays_reserved_until_redis_confirms() -> None:
    ledger = Ledger().granted(G, 1.0)
    out, amount = ledger.withdrawn(G)
    assert amount == 1.0 and out.leased("global") == 0.0 and out.reserved == {"global": 1.0}
    assert out.restored(G, amount) == ledger  # Redis could not take it: held again, as before
    assert out.given_back(G, amount).reserved == {"global": 0.0}
    assert Ledger().withdrawn(G) == (Ledger(), 0.0)


def test_the_ledger_is_a_value() -> None:
    ledger = Ledger().granted(G, 1.0)
    ledger.take(G, 0.5)
    ledger.recorded(("global",), 1.0)
    assert ledger.available(G) == 1.0 and ledger.pending == {}
    with pytest.raises(AttributeError):
        ledger.live = {}  # type: ignore[misc]


# -- the budget guarantee -----------------------------------------------------------------------------------
class _Cluster:
    """What Redis holds for one scope: recorded spend, and each node's outstanding lease."""

    def __init__(self, limit: float, spent: float) -> None:
        self.limit, self.spend, self.leases = limit, spent, {}

    def grant(self, node: int, ask: LeaseRequest) -> float:
        room = self.limit - self.spend - sum(self.leases.values())
        amount = min(ask.want, room)
        if amount < ask.need:
            return 0.0
        self.leases[node] = self.leases.get(node, 0.0) + amount
        return amount


class _Node:
    def __init__(self) -> None:
        self.ledger = Ledger()
        self.inflight: list[float] = []  # estimates admitted, not recorded yet
        self.unseen: list[float] = []  # costs recorded since the last read


_ops = st.lists(
    st.tuples(
        st.sampled_from(["admit", "admit", "admit", "finish", "finish", "read", "return"]),
        st.integers(0, 2),  # which node
        st.floats(0.001, 3.0),  # an estimate
        st.floats(0.0, 1.0),  # the share of its estimate a request really costs
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.floats(1.0, 50.0), spent=st.floats(0.0, 1.0), ops=_ops)
def test_admission_never_lets_committed_spend_pass_the_hard_limit(limit, spent, ops) -> None:
    spent *= limit
    cluster, nodes = _Cluster(limit, spent), [_Node() for _ in range(3)]
    for op, i, estimate, share in ops:
        node = nodes[i]
        if op == "admit":
            _admit(cluster, i, node, estimate)
        elif op == "finish" and node.inflight:
            _finish(cluster, i, node, node.inflight.pop(0), share)
        elif op == "read":
            _read(cluster, node)
        elif op == "return":
            node.ledger, amount = node.ledger.withdrawn(G)
            cluster.leases[i] = cluster.leases.get(i, 0.0) - amount
            node.ledger = node.ledger.given_back(G, amount)
        committed = cluster.spend + sum(n for node in nodes for n in node.inflight)
        assert committed <= limit + 1e-9
        assert cluster.spend + sum(cluster.leases.values()) <= limit + 1e-9
        for j, each in enumerate(nodes):  # the cluster's lease of a node = its unused lease + its in-flight
            assert cluster.leases.get(j, 0.0) == pytest.approx(each.ledger.leased("global") + sum(each.inflight),
                                                               abs=1e-9)


def _admit(cluster: _Cluster, i: int, node: _Node, estimate: float) -> None:
    after = node.ledger.take(G, estimate)
    if after is None:
        room = cluster.limit - node.ledger.committed("global")
        ask = node.ledger.lease_request([("global", cluster.limit, P)], estimate, room)
        granted = cluster.grant(i, ask)
        if granted <= 0:
            return
        node.ledger = node.ledger.granted(G, granted)
        after = node.ledger.take(G, estimate)
        assert after is not None  # a grant covers at least what was needed
    node.ledger = after
    node.inflight.append(estimate)


def _finish(cluster: _Cluster, i: int, node: _Node, estimate: float, share: float) -> None:
    cost = estimate * share  # max_tokens bounds the completion: a request costs at most its estimate
    cluster.spend += cost
    cluster.leases[i] -= estimate  # the record's write releases its reservation in the same step
    node.ledger = node.ledger.recorded(("global",), cost, estimate, ("global",))
    node.unseen.append(cost)


def _read(cluster: _Cluster, node: _Node) -> None:
    ledger = node.ledger.read({"global": P}, {"global": cluster.spend}, {"global": sum(cluster.leases.values())})
    for cost in node.unseen:
        ledger = ledger.unrecorded(("global",), cost)
    node.ledger, node.unseen = ledger, []
    # right after a read nothing is pending: the node's committed spend is the cluster's, less its unused lease
    assert ledger.spend("global") == pytest.approx(cluster.spend + sum(cluster.leases.values()), abs=1e-9)
    assert abs(sum(ledger.pending.values())) < 1e-9 + EPSILON
