"""The in-flight request (nexus/router_node/inflight.py): whatever path a request takes, the budget reservation
admission gave it goes back exactly once, in exactly one telemetry record, and no path writes a record twice.

Each case drives the request object the way the handler does on one path, then `close()` as the handler's
`finally` does (twice here: closing is idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import pytest

from nexus.core.gateway_errors import UpstreamError
from nexus.core.ledger import Reservation
from nexus.core.pipeline import Requirements, Route
from nexus.core.schemas import RoutingHeaders
from nexus.core.telemetry_store import TelemetryRecord
from nexus.core.usage import Usage
from nexus.router_node.fronts import CHAT_PATH, FRONTS
from nexus.router_node.inflight import Attempt, InFlight
from nexus.router_node.parsing import ParsedRequest
from tests.core.pipeline.helpers import backend, run, snapshot

AMOUNT = 0.25
PERIODS = MappingProxyType({"global": "this-period"})  # an opaque period name: no clock is involved


def _route() -> Route:
    decision = run(snapshot([backend("a"), backend("b")]))
    assert isinstance(decision, Route) and decision.alternatives
    return decision


def _request() -> tuple[InFlight, list[TelemetryRecord]]:
    records: list[TelemetryRecord] = []
    req = ParsedRequest(path="/v1/chat/completions", key_id=None, tenant=None, body={}, raw=b"{}", model="m",
                        stream=False, requirements=Requirements(max_output_tokens=2), routing=RoutingHeaders(),
                        watch=None, front=FRONTS[CHAT_PATH], client={}, protocol_headers={})
    return InFlight(req=req, node_id="n1", clock=lambda: 1000.0, sink=records.append), records


def _fail(r: InFlight, route: Route, n: int) -> None:
    b = route.ordered[n]
    r.attempt_failed(Attempt(b, n, route.model, None), UpstreamError(b.name, "refused before the first byte"))


def _answer(r: InFlight, route: Route, n: int) -> None:
    r.answered(Attempt(route.ordered[n], n, route.model, None), usage=Usage(3, 2), estimated=False, cost=0.1,
               outcome="success", status=200, ttfb_ms=1.0)


def answered_first(r: InFlight, route: Route) -> None:
    _answer(r, route, 0)


def failed_over_then_answered(r: InFlight, route: Route) -> None:
    _fail(r, route, 0)
    _answer(r, route, 1)


def every_candidate_failed(r: InFlight, route: Route) -> None:
    _fail(r, route, 0)
    _fail(r, route, 1)
    r.candidates_exhausted()


def client_gone_mid_failover(r: InFlight, route: Route) -> None:
    _fail(r, route, 0)  # then the client leaves: the handler only closes


def no_attempt(r: InFlight, route: Route) -> None:
    """Queue timeout after re-admission, an exception before the call, a cancelled task: only close()."""


def readmitted_for_a_fallback(r: InFlight, route: Route) -> None:
    every_candidate_failed(r, route)
    r.hold(Reservation(AMOUNT, PERIODS), route)  # the fallback's own reservation, released by its answer
    _answer(r, route, 0)


PATHS: dict[str, Callable[[InFlight, Route], None]] = {
    f.__name__: f
    for f in (answered_first, failed_over_then_answered, every_candidate_failed, client_gone_mid_failover,
              no_attempt, readmitted_for_a_fallback)
}


@pytest.mark.parametrize("path", PATHS.values(), ids=list(PATHS))
def test_the_reservation_is_released_exactly_once_on_every_path(path: Callable[[InFlight, Route], None]) -> None:
    route = _route()
    r, records = _request()
    r.hold(Reservation(AMOUNT, PERIODS), route)
    path(r, route)
    r.close()
    r.close()

    reservations = 2 if path is readmitted_for_a_fallback else 1
    carrying = [rec for rec in records if rec.reserved_usd]
    assert len(carrying) == reservations, records
    assert sum(rec.reserved_usd for rec in records) == pytest.approx(AMOUNT * reservations)
    assert all(rec.reserved_periods == dict(PERIODS) for rec in carrying)
    assert len({rec.id for rec in records}) == len(records), "a record was written twice"
    assert not r.reservation


def test_every_failed_attempt_leaves_one_record_and_the_answer_one() -> None:
    route = _route()
    r, records = _request()
    r.hold(Reservation(AMOUNT, PERIODS), route)
    failed_over_then_answered(r, route)
    r.close()
    assert [rec.id for rec in records] == [f"{r.request_id}:0", r.request_id]
    assert records[-1] is r.record and r.record.reserved_usd == AMOUNT  # the answer carries it, not the failure
