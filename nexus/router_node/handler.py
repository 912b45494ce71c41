"""Serving one inference request: parse, admit, try the candidates, fall back, answer or fail.

Flow for `POST /v1/chat/completions`, `/v1/embeddings`, `/v1/completions` and the other protocols' inference
endpoints (nexus/router_node/fronts.py: `/v1/messages`, `/v1/responses`, `/api/chat`, `/api/generate`,
`/api/embed`, each translated to one of those three APIs and back), one module a step:
1. authenticate the caller's tenant (tenants.py), read the bounded body, translate it (the front end),
   validate, parse the routing headers (parsing.py; a 4xx names the field, in the front's own error envelope);
   admit it under its tenant's RPM/TPM (admission.py over rates.py: 429 past them), settled at the end;
2. decide over the node's snapshot, waiting in the queue while queued, and reserve the estimate near a
   blocking hard limit (admission.py);
3. Route -> try the decision's ordered candidates (failover.py), relaying the answer with the X-Nexus-*
   headers (response.py);
4. nothing served -> the fallback chain of the model, each fallback through the full pipeline with the
   original decision's privacy carried over; then 404 / 503 / 502 / 504
   (docs/http-contract.md#errors; here, `_fail`);
5. the request object (inflight.py) bills the answer, writes its telemetry records to the node's buffer
   (never awaited on the way to the answer) and releases its reservation exactly once, whatever the path;
6. what the request leaves besides its records (observability.py: its log line, its trace, the per-request
   metrics, a sampled decision for the dashboard) is emitted when it ends, from the same records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexus.core.gateway_errors import (
    GatewayError,
    ModelNotFound,
    Unavailable,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from nexus.core.pipeline import Reject, Route, explain
from nexus.core.pipeline.explain import rejection_context, waiting_helps
from nexus.router_node.admission import admit, admit_rates
from nexus.router_node.asgi import Headers
from nexus.router_node.failover import try_candidates
from nexus.router_node.fronts import FRONTS
from nexus.router_node.inflight import InFlight
from nexus.router_node.parsing import parse_request
from nexus.router_node.response import send_front_error

if TYPE_CHECKING:
    from nexus.router_node.node import RouterNode

__all__ = ["handle_inference"]


async def handle_inference(node: RouterNode, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
    headers: Headers = []
    front = FRONTS[path]
    with node.observability.request(path) as obs:  # its log line, span and metrics when the request ends
        try:
            req = await parse_request(scope, receive, front, tenants=node.tenants,
                                      max_body_bytes=node.settings.server.max_body_bytes)
            r = InFlight(req, node.node_id, node.clock, node.record)
            obs.begin(r.request_id, req.model, req.key_id, req.stream, req.client)
            headers.append((b"x-nexus-request-id", r.request_id.encode()))
            try:
                await admit_rates(node, r)
                headers.extend(r.ticket.headers)
                await _serve(node, r, receive, send)
            finally:
                r.close()
                node.rates.settle(r.ticket, r.used_tokens)
        except GatewayError as err:
            obs.failed(err.status, type(err).__name__)
            node.metrics.errors.labels(type(err).__name__).inc()
            node.metrics.requests.labels(path, "", str(err.status)).inc()
            await send_front_error(send, front, err, headers)


async def _serve(node: RouterNode, r: InFlight, receive: Any, send: Any) -> None:
    models = [r.req.model]
    privacy = None
    i = 0
    while i < len(models):
        model = models[i]
        decision, snap = await admit(node, r, model, privacy)
        if r.first is None:
            r.first = decision
            privacy = decision.privacy_required
            if decision.policy is None or decision.policy.fallback_allowed:
                chain = snap.fallbacks.get(r.req.model) or snap.fallbacks.get(decision.model) or ()
                models.extend(m for m in chain if m not in models)
        fallback = model if i > 0 else None
        i += 1
        if isinstance(decision, Route) and await try_candidates(node, r, decision, snap, fallback, receive, send):
            if fallback is not None:
                node.metrics.fallbacks.labels(r.req.model, fallback).inc()
            return
    _fail(node, r, len(models) > 1)


def _fail(node: RouterNode, r: InFlight, had_fallbacks: bool) -> None:
    if r.failures:
        _fail_upstream(node, r)
    first = r.first
    model = r.req.model
    if not isinstance(first, Reject):  # routed, but every candidate's circuit refused it (trials in progress)
        names = [b.name for b in first.ordered] if isinstance(first, Route) else []
        retry = node.breakers.retry_after(names) or 1
        raise Unavailable(
            f"every candidate for '{model}' is being probed after failures on this replica; retry shortly",
            headers={"Retry-After": str(retry)},
        )
    if first.not_found and not first.error:
        snap = node.snapshot
        available = sorted({*snap.models, *snap.aliases}) if snap else []
        if r.req.tenant is not None:  # only what this key may use
            available = [m for m in available if r.req.tenant.allows_model(m)]
        suffix = " or its fallbacks" if had_fallbacks else ""
        raise ModelNotFound(
            f"model '{model}'{suffix} is not served by any backend; available models: {', '.join(available)}",
            param="model",
            context={"available_models": available},
        )
    opened = node.breakers.retry_after(x.agent_id for x in first.reasons)
    retry = opened if opened is not None else node.settings.health_check.interval_seconds
    ctx = rejection_context(first, retry_after_seconds=retry)
    if r.req.routing.explain:
        ctx["explain"] = explain(first)
    message = first.error or (
        f"no backend can serve '{model}': " + "; ".join(f"{x.agent_id}: {x.reason}" for x in first.reasons)
    )
    headers = {"Retry-After": str(int(retry))} if waiting_helps(first.reasons) else {}
    raise Unavailable(message, context=ctx, headers=headers)


def _fail_upstream(node: RouterNode, r: InFlight) -> None:
    upstream = r.failures
    tried = ", ".join(f"{e.backend} ({e})" for e in upstream)
    retry = node.breakers.retry_after(e.backend for e in upstream)
    headers = {"Retry-After": str(retry)} if retry is not None else {}
    if all(e.status == 429 for e in upstream):
        raise UpstreamRateLimited(f"every candidate is rate-limiting this gateway: {tried}", headers=headers)
    cls = UpstreamTimeout if upstream[-1].timeout else UpstreamFailed
    raise cls(f"every candidate failed before answering: {tried}", headers=headers)
