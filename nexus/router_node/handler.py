"""Serving one inference request: decide, wait if queued, proxy with failover, fall back, answer.

Flow for `POST /v1/chat/completions` and `POST /v1/embeddings`:
1. authenticate, read the bounded body, validate (400 names the field);
2. run the pipeline over the node's current snapshot and live load (no Redis round trip);
3. Queue -> wait in the replica's queue and re-run the whole pipeline on every change, until routed or
   `queue.max_wait_seconds` passes (503 + Retry-After);
4. Route -> try the decision's ordered candidates (at most 1 + `max_retries`); a failure before the
   first byte moves to the next candidate of the same decision, so the privacy constraint holds;
5. nothing served -> the fallback chain of the model, each fallback through the full pipeline with the
   original decision's privacy carried over; then 404 / 503 / 502 / 504 as docs/http-contract.md#errors says;
6. telemetry is recorded after the response, never awaited on the way to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from nexus.core.gateway_errors import (
    BadRequest,
    ClientDisconnected,
    GatewayError,
    ModelNotFound,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from nexus.core.model import Backend, BudgetStatus, TierMode
from nexus.core.pipeline import Decision, Queue, Reject, Requirements, Route, RoutingIntent, decide, explain
from nexus.core.pipeline.explain import rejection_context, waiting_helps
from nexus.core.pipeline.requirements import CHARS_PER_TOKEN, estimate_text_tokens, extract_requirements
from nexus.core.schemas import parse_chat, parse_embeddings, parse_json_object
from nexus.core.snapshot import Snapshot
from nexus.router_node.asgi import Headers, read_body, send_error, start_response
from nexus.router_node.protocol import ClientWatch
from nexus.router_node.queue import QueueFull
from nexus.router_node.upstream import Exchange, MidStreamError, Usage

if TYPE_CHECKING:
    from nexus.router_node.node import Reserved, RouterNode

__all__ = ["CHAT_PATH", "EMBEDDINGS_PATH", "authenticate", "handle_inference", "key_id_of"]

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
_TRUE = (b"true", b"1", b"yes", b"on")
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@contextlib.contextmanager
def _until_client_leaves(watch: ClientWatch | None) -> Iterator[None]:
    """Run the block as this request's cancellable work: if the client's connection is lost meanwhile, the
    block is cancelled (an upstream call stops, a queue wait ends) and ClientDisconnected raised instead."""
    if watch is None:  # served by something other than nexus/router_node/protocol.py: nothing to hook
        yield
        return
    task = asyncio.current_task()
    watch.task = task
    try:
        yield
    except asyncio.CancelledError:
        if not watch.gone or task is None:
            raise
        task.uncancel()
        raise ClientDisconnected("the client went away before the answer was ready") from None
    finally:
        watch.task = None


def key_id_of(key: str) -> str:
    """Stable, non-secret id of a client key: the first 12 hex chars of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(slots=True)
class _Request:
    path: str
    request_id: str
    started: float  # unix time
    t0: float  # perf counter
    key_id: str | None
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    requirements: Requirements
    tier_mode: TierMode | None
    priority: str
    explain: bool
    watch: ClientWatch | None = None
    attempts: list[str] = field(default_factory=list)


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


def authenticate(node: RouterNode, scope: dict[str, Any]) -> str | None:
    """The key id of the request's bearer key; None when no client keys are configured."""
    if not node.api_key_digests:
        return None
    auth = _header(scope, b"authorization")
    if not auth or not auth[:7].lower() == b"bearer ":
        raise Unauthorized("missing API key; send Authorization: Bearer <key>")
    digest = hashlib.sha256(auth[7:].strip()).hexdigest()
    if digest not in node.api_key_digests:
        raise Unauthorized("invalid API key")
    return digest[:12]


def _embedding_requirements(body: dict[str, Any]) -> Requirements:
    data = body.get("input")
    texts = (
        [data] if isinstance(data, str) else [x for x in data if isinstance(x, str)] if isinstance(data, list) else []
    )
    tokens = sum(estimate_text_tokens(t) for t in texts) or (len(data) if isinstance(data, list) else 0)
    return Requirements(input_tokens=tokens, max_output_tokens=0)


def _require_json(scope: dict[str, Any]) -> None:
    """Only a body declared as JSON is read: a browser's cross-site form or text/plain post (which needs no
    CORS preflight) must not be able to spend the budget."""
    ctype = _header(scope, b"content-type")
    if ctype is None or ctype.split(b";", 1)[0].strip().lower() != b"application/json":
        shown = ctype.decode("latin-1")[:60] if ctype else "none"
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (got {shown}); send the request as JSON", param="Content-Type"
        )


async def _parse(node: RouterNode, scope: dict[str, Any], receive: Any, path: str) -> _Request:
    key_id = authenticate(node, scope)
    _require_json(scope)
    raw = await read_body(scope, receive, node.settings.server.max_body_bytes)
    body = parse_json_object(raw)
    if path == CHAT_PATH:
        req = parse_chat(body)
        requirements = extract_requirements(body)
        stream = req.stream
        model = req.model
    else:
        model = parse_embeddings(body).model
        requirements = _embedding_requirements(body)
        stream = False
    strict = _header(scope, b"x-nexus-strict")
    flexible = _header(scope, b"x-nexus-flexible")
    tier_mode = None
    if strict is not None and strict.lower() in _TRUE:
        tier_mode = TierMode.STRICT
    elif flexible is not None and flexible.lower() in _TRUE:
        tier_mode = TierMode.FLEXIBLE
    prio = (_header(scope, b"x-nexus-priority") or b"normal").lower()
    if prio not in (b"high", b"normal"):
        raise BadRequest("X-Nexus-Priority must be 'high' or 'normal'", param="X-Nexus-Priority")
    exp = _header(scope, b"x-nexus-explain")
    return _Request(
        path=path,
        request_id=uuid.uuid4().hex,
        started=node.clock(),
        t0=time.perf_counter(),
        key_id=key_id,
        body=body,
        raw=raw,
        model=model,
        stream=stream,
        requirements=requirements,
        tier_mode=tier_mode,
        priority=prio.decode(),
        explain=exp is not None and exp.lower() in _TRUE,
        watch=scope.get("nexus.client"),
    )


def _decide(
    node: RouterNode, r: _Request, model: str, privacy: Any, exhausted: bool = False
) -> tuple[Decision, Snapshot]:
    snap = node.snapshot
    if snap is None:
        raise Unavailable(
            "this router node has not loaded its routing snapshot yet; retry shortly", headers={"Retry-After": "1"}
        )
    circuits = node.breakers.view()
    intent = RoutingIntent(
        model,
        r.requirements,
        request_id=r.request_id,
        tier_mode=r.tier_mode,
        priority=r.priority,
        api_key_id=r.key_id,
        load=node.load,
        rng=node.rng,
        sequence=node.next_sequence(),
        privacy_required=privacy,
        budget_exhausted=exhausted,
        failing_here=circuits.demoted,
        circuits_open=circuits.open,
        usable_unhealthy=circuits.usable_unhealthy,
    )
    t0 = time.perf_counter()
    decision = decide(intent, snap, trace=r.explain)
    node.metrics.pipeline_seconds.observe(time.perf_counter() - t0)
    for reason in decision.reasons:
        node.metrics.exclusions.labels(reason.reconciler).inc()
    return decision, snap


async def _decide_or_wait(
    node: RouterNode, r: _Request, model: str, privacy: Any, exhausted: bool = False
) -> tuple[Decision, Snapshot]:
    decision, snap = _decide(node, r, model, privacy, exhausted)
    if not isinstance(decision, Queue):
        return decision, snap
    wait = node.settings.queue.max_wait_seconds
    deadline = time.monotonic() + wait
    while isinstance(decision, Queue):
        left = deadline - time.monotonic()
        try:
            with _until_client_leaves(r.watch):
                woke = left > 0 and await node.queue.wait(r.priority, left)
        except QueueFull:
            raise Unavailable(
                f"{decision.reason}, and this replica's queue is full",
                headers={"Retry-After": str(max(1, round(wait / 4)))},
            ) from None
        if not woke:
            raise Unavailable(
                f"{decision.reason}; waited {wait:g}s (queue.max_wait_seconds)",
                headers={"Retry-After": str(max(1, round(wait / 4)))},
            )
        decision, snap = _decide(node, r, model, privacy, exhausted)
    return decision, snap


async def _admit(
    node: RouterNode, r: _Request, model: str, privacy: Any
) -> tuple[Decision, Snapshot, tuple[float, Reserved]]:
    """Decide (waiting if queued), then, near a blocking hard limit, reserve the estimate atomically; when
    the budget has no room left the request is decided again as at the hard limit (local may serve)."""
    decision, snap = await _decide_or_wait(node, r, model, privacy)
    if not isinstance(decision, Route):
        return decision, snap, (0.0, {})
    admitted, amount, period = await node.reserve(snap, decision.cost_estimate, r.key_id)
    if admitted:
        return decision, snap, (amount, period)
    decision, snap = await _decide_or_wait(node, r, model, privacy, exhausted=True)
    return decision, snap, (0.0, {})


def _budget_headers(decision: Decision, snap: Snapshot) -> Headers:
    if decision.budget_status is BudgetStatus.NORMAL or decision.budget_scope is None:
        return [(b"x-nexus-budget-status", decision.budget_status.value.encode())]
    state = snap.budgets[decision.budget_scope]
    remaining = state.remaining()
    out = [
        (b"x-nexus-budget-status", decision.budget_status.value.encode()),
        (b"x-nexus-budget-utilization", f"{state.utilization():.4f}".encode()),
    ]
    if remaining is not None:
        out.append((b"x-nexus-budget-remaining", f"{remaining:.4f}".encode()))
    return out


def _route_headers(
    r: _Request, decision: Route, snap: Snapshot, backend: Backend, reason: str, fallback: str | None
) -> Headers:
    h: Headers = [
        (b"x-nexus-request-id", r.request_id.encode()),
        (b"x-nexus-backend", backend.name.encode()),
        (b"x-nexus-backend-type", backend.kind.encode()),
        (b"x-nexus-privacy-zone", backend.zone.value.encode()),
        (b"x-nexus-route-reason", reason.encode()),
        (b"x-nexus-cost-estimated", f"{node_cost_estimate(decision, backend, snap, r):.6f}".encode()),
        *_budget_headers(decision, snap),
    ]
    if fallback is not None:
        h.append((b"x-nexus-fallback-model", fallback.encode()))
    if decision.warnings:
        h.append((b"x-nexus-warning", "; ".join(decision.warnings).encode("ascii", "replace")))
    return h


def node_cost_estimate(decision: Route, backend: Backend, snap: Snapshot, r: _Request) -> float:
    if backend.name == decision.backend.name:
        return decision.cost_estimate
    return _cost(
        snap,
        backend,
        decision.model,
        r.requirements.input_tokens,
        r.requirements.max_output_tokens if r.requirements.max_output_tokens is not None else 512,
    )


def _cost(snap: Snapshot, backend: Backend, model: str, prompt: int, completion: int) -> float:
    pin, pout = snap.price(backend.name, model)
    return (prompt * pin + completion * pout) / 1_000_000.0


async def handle_inference(node: RouterNode, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
    headers: Headers = []
    try:
        r = await _parse(node, scope, receive, path)
        headers.append((b"x-nexus-request-id", r.request_id.encode()))
        await _serve(node, r, receive, send)
    except GatewayError as err:
        node.metrics.errors.labels(type(err).__name__).inc()
        node.metrics.requests.labels(path, "", str(err.status)).inc()
        await send_error(send, err, headers)


async def _serve(node: RouterNode, r: _Request, receive: Any, send: Any) -> None:
    first_decision: Decision | None = None
    privacy = None
    last_upstream: list[UpstreamError] = []
    models = [r.model]
    i = 0
    while i < len(models):
        model = models[i]
        decision, snap, reserved = await _admit(node, r, model, privacy)
        if first_decision is None:
            first_decision = decision
            privacy = decision.privacy_required
            allowed = decision.policy is None or decision.policy.fallback_allowed
            chain = snap.fallbacks.get(r.model) or snap.fallbacks.get(decision.model) or ()
            if allowed:
                models.extend(m for m in chain if m not in models)
        fallback = model if i > 0 else None
        i += 1
        if isinstance(decision, Route):
            served = await _proxy(node, r, decision, snap, fallback, receive, send, last_upstream, reserved)
            if served:
                if fallback is not None:
                    node.metrics.fallbacks.labels(r.model, fallback).inc()
                return
    _fail(node, r, first_decision, last_upstream, len(models) > 1)


def _fail(
    node: RouterNode, r: _Request, first: Decision | None, upstream: list[UpstreamError], had_fallbacks: bool
) -> None:
    if upstream:
        last = upstream[-1]
        tried = ", ".join(f"{e.backend} ({e})" for e in upstream)
        retry = node.breakers.retry_after(e.backend for e in upstream)
        headers = {"Retry-After": str(retry)} if retry is not None else {}
        if all(e.status == 429 for e in upstream):
            raise UpstreamRateLimited(f"every candidate is rate-limiting this gateway: {tried}", headers=headers)
        cls = UpstreamTimeout if last.timeout else UpstreamFailed
        raise cls(f"every candidate failed before answering: {tried}", headers=headers)
    if not isinstance(first, Reject):  # routed, but every candidate's circuit refused it (trials in progress)
        names = [b.name for b in first.ordered] if isinstance(first, Route) else []
        retry = node.breakers.retry_after(names) or 1
        raise Unavailable(
            f"every candidate for '{r.model}' is being probed after failures on this replica; retry shortly",
            headers={"Retry-After": str(retry)},
        )
    if first.not_found and not first.error:
        snap = node.snapshot
        available = sorted({*snap.models, *snap.aliases}) if snap else []
        suffix = " or its fallbacks" if had_fallbacks else ""
        raise ModelNotFound(
            f"model '{r.model}'{suffix} is not served by any backend; available models: {', '.join(available)}",
            param="model",
            context={"available_models": available},
        )
    opened = node.breakers.retry_after(x.agent_id for x in first.reasons)
    retry = opened if opened is not None else node.settings.health_check.interval_seconds
    ctx = rejection_context(first, retry_after_seconds=retry)
    if r.explain:
        ctx["explain"] = explain(first)
    message = first.error or (
        f"no backend can serve '{r.model}': " + "; ".join(f"{x.agent_id}: {x.reason}" for x in first.reasons)
    )
    headers = {"Retry-After": str(int(retry))} if waiting_helps(first.reasons) else {}
    raise Unavailable(message, context=ctx, headers=headers)


async def _proxy(
    node: RouterNode,
    r: _Request,
    decision: Route,
    snap: Snapshot,
    fallback: str | None,
    receive: Any,
    send: Any,
    failures: list[UpstreamError],
    reserved: tuple[float, Reserved] = (0.0, {}),
) -> bool:
    """Try the decision's candidates in order. Exactly one telemetry record carries the reservation
    (the success, else the last failed attempt, else, when the request is cancelled or breaks on the
    way, a release record), so it is released exactly once."""
    held = [reserved]
    try:
        return await _attempts(node, r, decision, snap, fallback, receive, send, failures, held)
    except BaseException:
        if held[0][0] > 0:
            node.record_attempt_failure(
                r.request_id, "cancelled", decision.backend, decision.model, r.key_id, "cancelled", 0.0,
                reserved=held[0],
            )
        raise


async def _attempts(
    node: RouterNode,
    r: _Request,
    decision: Route,
    snap: Snapshot,
    fallback: str | None,
    receive: Any,
    send: Any,
    failures: list[UpstreamError],
    held: list[tuple[float, Reserved]],
) -> bool:
    reserved = held[0]
    budget = 1 + snap.max_retries
    last_failure: tuple | None = None
    for n, backend in enumerate(decision.ordered[:budget]):
        if not node.breakers.begin(backend.name):
            continue  # its circuit's trial is taken by another request
        node.load.acquire(backend.name)
        t_attempt = time.perf_counter()
        try:
            with _until_client_leaves(r.watch):
                ex = await node.upstream.open(
                    backend, r.path, r.body, r.raw, model=decision.model, stream=r.stream,
                    timeout=backend.timeout_seconds,
                )
        except UpstreamError as err:
            node.load.release(backend.name)
            node.note_upstream(backend.name, ok=False, why=err.reason, retry_after=err.retry_after,
                               rate_limited=err.status == 429)
            if err.invalid:
                node.metrics.upstream_invalid.labels(backend.name).inc()
            failures.append(err)
            node.metrics.failovers.labels(backend.name).inc()
            if last_failure is not None:
                node.record_attempt_failure(*last_failure)
            ms = (time.perf_counter() - t_attempt) * 1000.0
            last_failure = (r.request_id, n, backend, decision.model, r.key_id, str(err), ms)
            continue
        except ClientDisconnected:
            node.load.release(backend.name)
            if last_failure is not None:
                node.record_attempt_failure(*last_failure)
            _record_abandoned(node, r, decision, snap, backend, time.perf_counter() - t_attempt, n, fallback, reserved)
            held[0] = (0.0, {})
            raise
        except BaseException:  # cancelled (server shutdown past its grace period) or an unexpected error
            node.load.release(backend.name)
            raise
        ttfb = time.perf_counter() - t_attempt
        node.note_upstream(backend.name, ok=True)
        if last_failure is not None:
            node.record_attempt_failure(*last_failure)
            last_failure = None
        reason = "failover" if n > 0 else ("fallback" if fallback is not None else decision.route_reason)
        headers = _route_headers(r, decision, snap, backend, reason, fallback)
        delivered = [0]  # stream events sent to the client: what a stream cut short is billed by
        try:
            if ex.streaming:
                outcome = await _stream(node, r, decision, ex, headers, receive, send, delivered)
            else:
                outcome = await _answer(node, r, decision, ex, headers, send)
        finally:
            node.load.release(backend.name)
            node.queue.notify()
        elapsed = time.perf_counter() - t_attempt
        node.metrics.upstream_seconds.labels(backend.name).observe(elapsed)
        node.metrics.ttfb_seconds.labels(backend.name).observe(ttfb)
        node.metrics.requests.labels(r.path, backend.name, str(ex.status)).inc()
        usage = ex.usage
        estimated = usage is None
        partial = outcome == "midstream_error" and usage is None
        if partial:
            # cut off by the upstream before it reported usage: the prompt plus the tokens delivered (about
            # one per content event), not the whole max_tokens estimate
            usage = Usage(r.requirements.input_tokens, delivered[0])
        elif usage is None:
            usage = _estimate(node, r, backend, ex)
        cost = (
            _cost(snap, backend, decision.model, usage.prompt_tokens, usage.completion_tokens)
            if ex.status == 200
            else 0.0
        )
        node.record_request(
            request_id=r.request_id,
            started=r.started,
            backend=backend,
            model=decision.model,
            requested_model=r.model,
            key_id=r.key_id,
            usage=usage,
            estimated=estimated,
            cost=cost,
            latency_ms=elapsed * 1000.0,
            ttfb_ms=ttfb * 1000.0,
            outcome=outcome,
            status=ex.status,
            stream=r.stream,
            fallback=fallback,
            retries=n,
            reserved=reserved,
            partial=partial,
        )
        held[0] = (0.0, {})
        return True
    if last_failure is not None:
        node.record_attempt_failure(*last_failure, reserved=reserved)
        held[0] = (0.0, {})
    return False


def _record_abandoned(
    node: RouterNode, r: _Request, decision: Route, snap: Snapshot, backend: Backend, elapsed: float, retries: int,
    fallback: str | None, reserved: tuple[float, Reserved],
) -> None:
    """A client that left while its upstream call was running still leaves one record: the backend had the
    prompt (billed on the estimate, never under-counted), no answer was delivered, the reservation goes back."""
    usage = Usage(r.requirements.input_tokens, 0)
    node.record_request(
        request_id=r.request_id, started=r.started, backend=backend, model=decision.model, requested_model=r.model,
        key_id=r.key_id, usage=usage, estimated=True,
        cost=_cost(snap, backend, decision.model, usage.prompt_tokens, 0),
        latency_ms=elapsed * 1000.0, ttfb_ms=None, outcome="client_disconnected", status=499,
        stream=r.stream, fallback=fallback, retries=retries, reserved=reserved,
    )


def _estimate(node: RouterNode, r: _Request, backend: Backend, ex: Exchange) -> Usage:
    """What to bill when the backend reported no valid usage: the prompt estimate, and the answer's text length
    (else max_tokens, else 512) for the completion. A metric says why; invalid usage is logged too."""
    if ex.status != 200:
        return Usage(r.requirements.input_tokens, 0)
    node.metrics.usage_estimated.labels(backend.name, "invalid" if ex.usage_problem else "missing").inc()
    if ex.usage_problem:
        node.warn_once(f"usage:{backend.name}", "backend %s sent usage that cannot be billed (%s); billing the "
                       "estimate", backend.name, ex.usage_problem)
    if ex.completion_chars:
        out = -(-ex.completion_chars // CHARS_PER_TOKEN)
    else:
        out = r.requirements.max_output_tokens if r.requirements.max_output_tokens is not None else 512
    return Usage(r.requirements.input_tokens, out)


async def _answer(node: RouterNode, r: _Request, decision: Route, ex: Exchange, headers: Headers, send: Any) -> str:
    body = ex.first
    if r.explain and ex.status == 200:
        try:
            payload = orjson.loads(body)
            payload["nexus_explain"] = explain(decision)
            body = orjson.dumps(payload)
        except (orjson.JSONDecodeError, TypeError):
            pass
    headers = [(b"content-type", ex.content_type.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await start_response(send, ex.status, headers)
    await send({"type": "http.response.body", "body": body})
    return "ok" if ex.status == 200 else f"http_{ex.status}"


def _events(chunk: bytes) -> int:
    return chunk.count(b"data:") - chunk.count(b"data: [DONE]")


async def _stream(
    node: RouterNode, r: _Request, decision: Route, ex: Exchange, headers: Headers, receive: Any, send: Any,
    delivered: list[int],
) -> str:
    await start_response(send, 200, [*_SSE_HEADERS, *headers])
    if r.explain:
        await send(
            {
                "type": "http.response.body",
                "body": b": nexus-explain " + orjson.dumps(explain(decision)) + b"\n\n",
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": ex.first, "more_body": True})
    delivered[0] += _events(ex.first)

    async def pump() -> str:
        try:
            async for chunk in ex.rest():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                delivered[0] += _events(chunk)
        except MidStreamError as err:
            if err.reported:
                await send({"type": "http.response.body", "body": b""})
                return "midstream_error"
            event = {
                "error": {
                    "message": f"upstream failed mid-stream: {err}",
                    "type": "upstream_error",
                    "param": None,
                    "code": "upstream_stream_error",
                }
            }
            await send(
                {"type": "http.response.body", "body": b"data: " + orjson.dumps(event) + b"\n\n", "more_body": True}
            )
            await send({"type": "http.response.body", "body": b""})
            return "midstream_error"
        await send({"type": "http.response.body", "body": b""})
        return "ok"

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pump_task = asyncio.ensure_future(pump())
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({pump_task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if pump_task in done:
            return pump_task.result()
        pump_task.cancel()
        ex.close()
        await asyncio.gather(pump_task, return_exceptions=True)
        return "client_disconnected"
    finally:
        watch.cancel()
        if not pump_task.done():
            pump_task.cancel()
        ex.close()
