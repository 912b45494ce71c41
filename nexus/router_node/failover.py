"""Trying one routed decision's candidates in order, at most 1 + `max_retries` of them.

A candidate whose circuit refuses (its trial is taken by another request) is skipped. A failure before the
first byte moves to the next candidate of the same decision, so the decision's privacy constraint holds;
the backend's circuit and the failover metrics learn of it. Once a candidate answers, its answer is
relayed (nexus/router_node/response.py) and billed, and the request writes its record. A client that leaves
while the upstream call runs still leaves one record: the backend had the prompt (billed on the estimate,
never under-counted), no answer was delivered. Load counted on a backend is released on every path.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from nexus.core.gateway_errors import ClientDisconnected, UpstreamError
from nexus.core.model import Backend
from nexus.core.pipeline import Route
from nexus.core.snapshot import Snapshot
from nexus.core.telemetry_store import Outcome
from nexus.core.usage import Usage
from nexus.router_node import response
from nexus.router_node.breaker import Breakers
from nexus.router_node.inflight import Attempt, InFlight, cost, estimated_usage
from nexus.router_node.load import LoadTracker
from nexus.router_node.metrics import Metrics
from nexus.router_node.native import open_native
from nexus.router_node.queue import RequestQueue
from nexus.router_node.upstream import Exchange, Upstream

__all__ = ["ProxyingNode", "try_candidates"]


class ProxyingNode(Protocol):
    """What trying candidates uses of the router node (nexus/router_node/node.py)."""

    breakers: Breakers
    load: LoadTracker
    upstream: Upstream
    metrics: Metrics
    queue: RequestQueue

    def note_upstream(self, backend: str, ok: bool, why: str = "", retry_after: float | None = None,
                      rate_limited: bool = False) -> None: ...

    def warn_once(self, topic: str, message: str, *args: object) -> None: ...


async def try_candidates(node: ProxyingNode, r: InFlight, decision: Route, snap: Snapshot, fallback: str | None,
                         receive: Any, send: Any) -> bool:
    """True when a candidate answered (and the answer was relayed); False when none could."""
    for n, backend in enumerate(decision.ordered[: 1 + snap.max_retries]):
        if not node.breakers.begin(backend.name):
            continue  # its circuit's trial is taken by another request
        attempt = Attempt(backend, n, decision.model, fallback)
        ex = await _open(node, r, snap, attempt)
        if ex is not None:
            await _relay(node, r, decision, snap, attempt, ex, receive, send)
            return True
    r.candidates_exhausted()
    return False


async def _open(node: ProxyingNode, r: InFlight, snap: Snapshot, attempt: Attempt) -> Exchange | None:
    """The upstream exchange, up to its first byte; None when this candidate failed (the next is tried)."""
    backend = attempt.backend
    node.load.acquire(backend.name)
    try:
        with r.until_client_leaves():
            ex = await _call(node.upstream, r, attempt)
    except UpstreamError as err:
        node.load.release(backend.name)
        node.note_upstream(backend.name, ok=False, why=err.reason, retry_after=err.retry_after,
                           rate_limited=err.status == 429)
        if err.invalid:
            node.metrics.upstream_invalid.labels(backend.name).inc()
        node.metrics.failovers.labels(backend.name).inc()
        r.attempt_failed(attempt, err)
        return None
    except ClientDisconnected:
        node.load.release(backend.name)
        usage = Usage(r.req.requirements.input_tokens, 0)
        r.answered(attempt, usage=usage, estimated=True, cost=cost(snap, backend, attempt.model, usage),
                   outcome=Outcome.CLIENT_DISCONNECTED, status=499, ttfb_ms=None)
        raise
    except BaseException:  # cancelled (server shutdown past its grace period) or an unexpected error
        node.load.release(backend.name)
        raise
    node.note_upstream(backend.name, ok=True)
    return ex


async def _call(upstream: Upstream, r: InFlight, attempt: Attempt) -> Exchange:
    backend, req = attempt.backend, r.req
    if req.front.native is backend.type:  # the client speaks this backend's protocol: sent as it came
        return await open_native(upstream, backend, req.client, model=attempt.model, stream=req.stream,
                                 timeout=backend.timeout_seconds, headers=req.protocol_headers)
    return await upstream.open(backend, req.path, req.body, req.raw, model=attempt.model, stream=req.stream,
                               timeout=backend.timeout_seconds)


async def _relay(node: ProxyingNode, r: InFlight, decision: Route, snap: Snapshot, attempt: Attempt, ex: Exchange,
                 receive: Any, send: Any) -> None:
    backend = attempt.backend
    ttfb = time.perf_counter() - attempt.t0
    headers = response.route_headers(r, decision, snap, attempt)
    delivered = response.Delivered()

    def cost_of(usage: Usage) -> float:
        return cost(snap, backend, attempt.model, usage)

    try:
        if ex.streaming:
            outcome = await response.stream(send, receive, r, ex, headers, decision, delivered, cost_of)
        else:
            if ex.status == 200 and ex.usage is not None:  # the real cost, from the backend's usage
                headers.append((b"x-nexus-cost", f"{cost_of(ex.usage):.6f}".encode()))
            outcome = await response.answer(send, r, ex, headers, decision)
    finally:
        node.load.release(backend.name)
        node.queue.notify()
    node.metrics.upstream_seconds.labels(backend.name).observe(time.perf_counter() - attempt.t0)
    node.metrics.ttfb_seconds.labels(backend.name).observe(ttfb)
    node.metrics.requests.labels(r.req.front.path, backend.name, str(ex.status)).inc()
    usage, partial = _billed_usage(node, r, backend, ex, outcome, delivered)
    r.answered(attempt, usage=usage, estimated=ex.usage is None, cost=cost_of(usage) if ex.status == 200 else 0.0,
               outcome=outcome, status=ex.status, ttfb_ms=ttfb * 1000.0, partial=partial)


def _billed_usage(node: ProxyingNode, r: InFlight, backend: Backend, ex: Exchange, outcome: str,
                  delivered: response.Delivered) -> tuple[Usage, bool]:
    """(the usage to bill, whether it is a stream's partial count). A metric says why usage was estimated;
    usage that cannot be billed is logged too."""
    if ex.usage is not None:
        return ex.usage, False
    if outcome == Outcome.MIDSTREAM_ERROR:
        # cut off by the upstream before it reported usage: the prompt plus the tokens delivered (about one
        # per content event), not the whole max_tokens estimate
        return Usage(r.req.requirements.input_tokens, delivered.events), True
    if ex.status == 200:
        node.metrics.usage_estimated.labels(backend.name, "invalid" if ex.usage_problem else "missing").inc()
        if ex.usage_problem:
            node.warn_once(f"usage:{backend.name}", "backend %s sent usage that cannot be billed (%s); billing "
                           "the estimate", backend.name, ex.usage_problem)
    return estimated_usage(r.req.requirements, ex), False
