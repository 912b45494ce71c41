"""The response to the client: the X-Nexus-* headers of a routed answer, and its body relayed from the
upstream (one JSON body, or an SSE stream pumped event by event). docs/http-contract.md lists the headers.

Bodies and streams pass through the client's front end (nexus/router_node/fronts.py): the OpenAI fronts relay
the bytes as they came (a stream's usage chunk gains `nexus_cost_usd` when the client asked for usage), the
others render the answer in their protocol. A stream ends one of three ways, returned as the record's
outcome: the upstream finished (`ok`), it broke off (`midstream_error`: the client gets the protocol's error
event unless the upstream already sent one, then the end of the body), or the client left
(`client_disconnected`: the upstream call is closed at once).
`Delivered` counts the stream events the client got, which is what a stream cut short is billed by.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from nexus.core.gateway_errors import GatewayError
from nexus.core.model import Backend, BudgetStatus
from nexus.core.pipeline import Decision, Route, explain
from nexus.core.snapshot import Snapshot
from nexus.core.telemetry_store import Outcome
from nexus.router_node.asgi import Headers, send_json, start_response
from nexus.router_node.fronts import CostOf, Front
from nexus.router_node.inflight import Attempt, InFlight, estimated_cost
from nexus.router_node.upstream import Exchange, MidStreamError

__all__ = ["SSE_HEADERS", "Delivered", "answer", "budget_headers", "route_headers", "route_reason", "send_front_error",
           "stream"]

SSE_HEADERS: Headers = [  # with the front's content type
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def budget_headers(decision: Decision, snap: Snapshot) -> Headers:
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


def route_reason(decision: Route, attempt: Attempt) -> str:
    if attempt.n > 0:
        return "failover"
    return "fallback" if attempt.fallback is not None else decision.route_reason


def route_headers(r: InFlight, decision: Route, snap: Snapshot, attempt: Attempt) -> Headers:
    backend: Backend = attempt.backend
    estimate = estimated_cost(decision, backend, snap, r.req.requirements)
    h: Headers = [
        (b"x-nexus-request-id", r.request_id.encode()),
        (b"x-nexus-backend", backend.name.encode()),
        (b"x-nexus-backend-type", backend.kind.encode()),
        (b"x-nexus-privacy-zone", backend.zone.value.encode()),
        (b"x-nexus-route-reason", route_reason(decision, attempt).encode()),
        (b"x-nexus-cost-estimated", f"{estimate:.6f}".encode()),
        *budget_headers(decision, snap),
    ]
    if attempt.fallback is not None:
        h.append((b"x-nexus-fallback-model", attempt.fallback.encode()))
    h.extend(r.ticket.headers)  # a rate-limited key's x-ratelimit-* (docs/tenancy.md)
    if r.lifecycle is not None:
        h.append((b"x-nexus-lifecycle-status", r.lifecycle.encode("ascii", "replace")))
    if decision.warnings:
        h.append((b"x-nexus-warning", "; ".join(decision.warnings).encode("ascii", "replace")))
    return h


class Delivered:
    """Stream events sent to the client so far (about one token each)."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events = 0

    def add(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data:") - chunk.count(b"data: [DONE]")


def _body(body: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


async def send_front_error(send: Any, front: Front, err: GatewayError, headers: Headers | None = None) -> None:
    """An error in the front's protocol envelope, with the error's headers and the protocol's own."""
    h = list(headers or [])
    h.extend((k.lower().encode(), v.encode()) for k, v in {**err.headers, **front.error_headers(err)}.items())
    await send_json(send, err.status, front.error(err), h)


async def answer(send: Any, r: InFlight, ex: Exchange, headers: Headers, decision: Route) -> str:
    body = r.req.front.answer(r.info, ex.status, ex.first, ex.native)
    if r.req.routing.explain and ex.status == 200:
        try:
            payload = orjson.loads(body)
            payload["nexus_explain"] = explain(decision)
            body = orjson.dumps(payload)
        except (orjson.JSONDecodeError, TypeError):
            pass
    headers = [(b"content-type", ex.content_type.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await start_response(send, ex.status, headers)
    await send({"type": "http.response.body", "body": body})
    return Outcome.OK if ex.status == 200 else Outcome.http(ex.status)


async def _out(send: Any, render: Any, chunk: bytes, delivered: Delivered) -> None:
    delivered.add(chunk)
    data = render.feed(chunk)
    if data:
        await send(_body(data))


async def _pump(send: Any, ex: Exchange, render: Any, delivered: Delivered) -> str:
    try:
        async for chunk in ex.rest():
            await _out(send, render, chunk, delivered)
    except MidStreamError as err:
        if not err.reported:  # else it ended in the protocol's own error event
            await send(_body(render.fail(f"upstream failed mid-stream: {err}")))
        await send({"type": "http.response.body", "body": b""})
        return Outcome.MIDSTREAM_ERROR
    await send({"type": "http.response.body", "body": b""})
    return Outcome.OK


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def stream(send: Any, receive: Any, r: InFlight, ex: Exchange, headers: Headers, decision: Route,
                 delivered: Delivered, cost_of: CostOf) -> str:
    front = r.req.front
    render = front.stream(r.info, cost_of, ex.native)
    await start_response(send, 200, [(b"content-type", front.stream_type), *SSE_HEADERS, *headers])
    if r.req.routing.explain and front.stream_comments:
        await send(_body(b": nexus-explain " + orjson.dumps(explain(decision)) + b"\n\n"))
    await _out(send, render, ex.first, delivered)
    pump_task = asyncio.ensure_future(_pump(send, ex, render, delivered))
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({pump_task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if pump_task in done:
            return pump_task.result()
        pump_task.cancel()
        ex.close()
        await asyncio.gather(pump_task, return_exceptions=True)
        return Outcome.CLIENT_DISCONNECTED
    finally:
        watch.cancel()
        if not pump_task.done():
            pump_task.cancel()
        ex.close()
