"""Admitting one request: under its tenant's rate limits first (`admit_rates`), then decide over the node's
snapshot, wait in the queue while the decision is Queue, and, near a blocking hard limit, take the estimate
from the node's budget lease.

Rate limits (RPM/TPM of the key and its team, nexus/router_node/rates.py) count the request's estimate
(prompt + max output) on the way in, from this replica's allowance, and settle to the real usage when it
ends (the handler calls `RateGate.settle` on every path); past them, 429 with `Retry-After`.

The pipeline runs over the node's current snapshot and live load, no Redis round trip. A Queue decision
waits in this replica's queue and re-runs the whole pipeline on every change, until routed or
`queue.max_wait_seconds` pass (503 + Retry-After; also when the queue is full). A Route whose estimate the
budget has no room for is decided again as at the hard limit (a local backend may still serve it). The
reservation taken is handed to the request (`InFlight.hold`), which releases it exactly once.
"""

from __future__ import annotations

import random
import time
from typing import Protocol

from nexus.core.config import NexusSettings
from nexus.core.gateway_errors import Unavailable
from nexus.core.ledger import Reservation
from nexus.core.model import Zone
from nexus.core.pipeline import Decision, Queue, Route, RoutingIntent, decide
from nexus.core.snapshot import Snapshot
from nexus.router_node.breaker import Breakers
from nexus.router_node.inflight import InFlight
from nexus.router_node.load import LoadTracker
from nexus.router_node.metrics import Metrics
from nexus.router_node.observability import current as observation
from nexus.router_node.queue import QueueFull, RequestQueue
from nexus.router_node.rates import RateGate

__all__ = ["AdmittingNode", "admit", "admit_rates"]


class AdmittingNode(Protocol):
    """What admission uses of the router node (nexus/router_node/node.py)."""

    settings: NexusSettings
    breakers: Breakers
    load: LoadTracker
    rng: random.Random
    metrics: Metrics
    queue: RequestQueue
    rates: RateGate

    @property
    def snapshot(self) -> Snapshot | None: ...

    def next_sequence(self) -> int: ...

    async def reserve(self, snap: Snapshot, estimate: float, key_id: str | None, at: float) -> Reservation | None: ...


def _decide(node: AdmittingNode, r: InFlight, model: str, privacy: Zone | None,
            exhausted: bool) -> tuple[Decision, Snapshot]:
    snap = node.snapshot
    if snap is None:
        raise Unavailable(
            "this router node has not loaded its routing snapshot yet; retry shortly", headers={"Retry-After": "1"}
        )
    circuits = node.breakers.view()
    req = r.req
    intent = RoutingIntent(
        model,
        req.requirements,
        request_id=r.request_id,
        tier_mode=req.routing.tier_mode,
        priority=req.routing.priority,
        api_key_id=req.key_id,
        load=node.load,
        rng=node.rng,
        sequence=node.next_sequence(),
        privacy_required=privacy,
        budget_exhausted=exhausted,
        failing_here=circuits.demoted,
        circuits_open=circuits.open,
        usable_unhealthy=circuits.usable_unhealthy,
        tenant=req.tenant,
    )
    obs = observation()
    t0 = time.perf_counter()
    decision = decide(intent, snap, trace=req.routing.explain or (obs is not None and obs.sampled))
    took = time.perf_counter() - t0
    node.metrics.pipeline_seconds.observe(took)
    if obs is not None:  # a sampled decision goes to the dashboard's ring of recent decisions
        obs.decided(decision, took)
    for reason in decision.reasons:
        node.metrics.exclusions.labels(reason.reconciler).inc()
    return decision, snap


async def _decide_or_wait(node: AdmittingNode, r: InFlight, model: str, privacy: Zone | None,
                          exhausted: bool = False) -> tuple[Decision, Snapshot]:
    decision, snap = _decide(node, r, model, privacy, exhausted)
    if snap.lifecycle:
        r.lifecycle = r.lifecycle or snap.lifecycle.get(decision.model)
    if not isinstance(decision, Queue):
        return decision, snap
    wait = node.settings.queue.max_wait_seconds
    retry = {"Retry-After": str(max(1, round(wait / 4)))}
    deadline = time.monotonic() + wait
    while isinstance(decision, Queue):
        left = deadline - time.monotonic()
        try:
            with r.until_client_leaves():
                woke = left > 0 and await node.queue.wait(decision.priority, left)
        except QueueFull:
            raise Unavailable(f"{decision.reason}, and this replica's queue is full", headers=retry) from None
        if not woke:
            raise Unavailable(f"{decision.reason}; waited {wait:g}s (queue.max_wait_seconds)", headers=retry)
        decision, snap = _decide(node, r, model, privacy, exhausted)
    return decision, snap


async def admit_rates(node: AdmittingNode, r: InFlight) -> None:
    """Admit `r` under its tenant's RPM/TPM, before anything else is spent on it; `r` holds the ticket."""
    need = r.req.requirements
    r.ticket = await node.rates.admit(r.req.tenant, need.input_tokens + need.output_estimate)


async def admit(node: AdmittingNode, r: InFlight, model: str, privacy: Zone | None) -> tuple[Decision, Snapshot]:
    """The decision for `model` (waiting if queued); a Route's reservation is held by `r`."""
    decision, snap = await _decide_or_wait(node, r, model, privacy)
    if not isinstance(decision, Route):
        return decision, snap
    reservation = await node.reserve(snap, decision.cost_estimate, r.req.key_id, r.started)
    if reservation is not None:
        r.hold(reservation, decision)
        return decision, snap
    return await _decide_or_wait(node, r, model, privacy, exhausted=True)
