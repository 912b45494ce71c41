"""What one request leaves behind besides its telemetry record: one structured log line, one trace (with
`[telemetry] otel_enabled`), Rust Nexus's per-request metrics, and, sampled, its decision in the node's
ring of recent decisions (the dashboard's "recent routing decisions").

The handler opens a `RequestObservation` per inference request (`Observability.request`, a context
variable for the request's task); the pipeline notes each decision, the node notes each telemetry record it
makes (the final one and every failed attempt: `note_record`), and when the request ends `finish` emits
everything from those same facts, so the log line, the span and the metrics always agree on the backend,
status and cost.

Spans (OpenTelemetry, the `otel` extra): `nexus.request` (the request), children `nexus.pipeline` (each
decision) and `nexus.upstream` (each attempt, timed from its record), with the GenAI semantic conventions'
attributes (`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`, ...) and the
decision's (`nexus.backend`, `nexus.route_reason`, `nexus.exclusions`). Exported over OTLP/HTTP to
`[telemetry] otlp_endpoint` in batches, off the request path.

Never logged: prompts and completions (unless `[logging] enable_content_logging`), keys, secrets. The
decision ring holds the model names, backend, reasons and trace of a decision, never content.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis

from nexus.core import keys
from nexus.core.config import NexusSettings
from nexus.core.errors import StateError
from nexus.core.observed import guard
from nexus.core.pipeline import Decision, Route, explain
from nexus.core.telemetry_store import TelemetryRecord
from nexus.router_node.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["Observability", "RequestObservation", "build_tracer_provider", "current", "note_record"]

log = logging.getLogger("nexus.request")
_current: ContextVar[RequestObservation | None] = ContextVar("nexus_request", default=None)
RING_FLUSH_SECONDS = 0.5


def current() -> RequestObservation | None:
    """The observation of the request this task serves, if any."""
    return _current.get()


def note_record(rec: TelemetryRecord) -> None:
    """The node made a telemetry record for the request in progress (if any is being observed)."""
    obs = _current.get()
    if obs is not None:
        obs.note(rec)


class RequestObservation:
    __slots__ = ("attempts", "body", "decisions", "error", "key_id", "model", "path", "record", "request_id",
                 "sampled", "started", "status", "stream", "t0")

    def __init__(self, path: str, sampled: bool) -> None:
        self.path = path
        self.sampled = sampled
        self.started = time.time()
        self.t0 = time.perf_counter()
        self.request_id = ""
        self.model = ""
        self.key_id: str | None = None
        self.stream = False
        self.body: dict[str, Any] | None = None
        self.record: TelemetryRecord | None = None
        self.attempts: list[tuple[TelemetryRecord, int]] = []  # failed attempts with their end (ns)
        self.decisions: list[tuple[Decision, float, int]] = []  # decision, seconds, end (ns)
        self.status = 200
        self.error: str | None = None

    def begin(self, request_id: str, model: str, key_id: str | None, stream: bool, body: dict[str, Any]) -> None:
        self.request_id, self.model, self.key_id, self.stream, self.body = request_id, model, key_id, stream, body

    def decided(self, decision: Decision, seconds: float) -> None:
        self.decisions.append((decision, seconds, time.time_ns()))

    def note(self, rec: TelemetryRecord) -> None:
        if rec.id == self.request_id:
            self.record = rec
            self.status = rec.status
        elif rec.id.rpartition(":")[2].isdigit():  # `<id>:<n>`: a failed attempt (not a release record)
            self.attempts.append((rec, time.time_ns()))

    def failed(self, status: int, kind: str) -> None:
        self.status, self.error = status, kind

    def route(self) -> Route | None:
        for decision, _, _ in reversed(self.decisions):
            if isinstance(decision, Route):
                return decision
        return None

    def fields(self, content: bool) -> dict[str, Any]:
        rec, route = self.record, self.route()
        out: dict[str, Any] = {
            "request_id": self.request_id or None,
            "key_id": self.key_id,
            "model": self.model or None,
            "resolved_model": rec.model if rec else (route.model if route else None),
            "backend": rec.backend if rec else None,
            "route_reason": route.route_reason if route else None,
            "status": self.status,
            "outcome": rec.outcome if rec else "error",
            "error": self.error,
            "latency_ms": round((time.perf_counter() - self.t0) * 1000.0, 3),
            "ttfb_ms": round(rec.ttfb_ms, 3) if rec and rec.ttfb_ms is not None else None,
            "prompt_tokens": rec.prompt_tokens if rec else 0,
            "completion_tokens": rec.completion_tokens if rec else 0,
            "cost_usd": rec.cost_usd if rec else 0.0,
            "estimated": rec.estimated if rec else False,
            "fallback": rec.fallback_model if rec else None,
            "retries": rec.retries if rec else len(self.attempts),
            "stream": self.stream,
        }
        if content and self.body is not None:
            out["messages"] = self.body.get("messages", self.body.get("input"))
        return out


def build_tracer_provider(settings: NexusSettings) -> TracerProvider:
    """A tracer provider exporting to `[telemetry] otlp_endpoint` over OTLP/HTTP (needs the `otel` extra)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
        raise StateError("[telemetry] otel_enabled needs the otel extra: pip install 'nexus-gateway[otel]'") from exc
    t = settings.telemetry
    provider = TracerProvider(resource=Resource.create({"service.name": t.service_name}),
                              sampler=TraceIdRatioBased(t.sample_ratio))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=t.otlp_endpoint,
                                                                    headers=dict(t.otlp_headers))))
    return provider


class Observability:
    """One per router node."""

    def __init__(self, settings: NexusSettings, metrics: Metrics, redis: Redis, node_id: str,
                 rng: random.Random | None = None) -> None:
        self._metrics = metrics
        self._redis = redis
        self._node = node_id
        self._rng = rng or random.Random()
        t = settings.telemetry
        self._kept, self._ratio = t.decisions_kept, t.decisions_sample_ratio
        self._content = settings.logging.enable_content_logging
        self._log_requests = settings.logging.request_log
        self._ring: deque[bytes] = deque(maxlen=max(1, self._kept))
        self._flush: asyncio.Task[None] | None = None
        self._provider: Any = build_tracer_provider(settings) if t.otel_enabled else None
        self._tracer: Tracer | None = self._provider.get_tracer("nexus") if self._provider is not None else None

    def use_tracer_provider(self, provider: TracerProvider) -> None:
        """Trace to `provider` instead (tests: the SDK's in-memory exporter)."""
        self._provider, self._tracer = provider, provider.get_tracer("nexus")

    def sample(self) -> bool:
        return self._kept > 0 and self._ratio > 0 and self._rng.random() < self._ratio

    @contextlib.contextmanager
    def request(self, path: str) -> Iterator[RequestObservation]:
        obs = RequestObservation(path, self.sample())
        token = _current.set(obs)
        try:
            yield obs
        finally:
            _current.reset(token)
            self._finish(obs)

    def _finish(self, obs: RequestObservation) -> None:
        fields = obs.fields(self._content)
        if self._log_requests:
            shown = " ".join(f"{k}={fields[k]}" for k in ("model", "backend", "status", "latency_ms"))
            log.info("request %s %s", obs.request_id or "-", shown, extra={"fields": fields})
        if self._tracer is not None:
            self._trace(obs, fields)
        if obs.sampled and obs.decisions:
            self._remember(obs)

    def _trace(self, obs: RequestObservation, fields: dict[str, Any]) -> None:
        from opentelemetry import trace

        assert self._tracer is not None
        end = time.time_ns()
        root = self._tracer.start_span("nexus.request", start_time=int(obs.started * 1e9), attributes=_attrs({
            "gen_ai.operation.name": "embeddings" if obs.path.endswith("embeddings") else "chat",
            "gen_ai.request.model": obs.model, "gen_ai.response.model": fields["resolved_model"],
            "gen_ai.usage.input_tokens": fields["prompt_tokens"],
            "gen_ai.usage.output_tokens": fields["completion_tokens"],
            "http.response.status_code": obs.status, "nexus.request_id": obs.request_id,
            "nexus.backend": fields["backend"], "nexus.route_reason": fields["route_reason"],
            "nexus.cost_usd": fields["cost_usd"], "nexus.retries": fields["retries"],
            "nexus.fallback": fields["fallback"], "error.type": obs.error,
        }))
        ctx = trace.set_span_in_context(root)
        for decision, seconds, at in obs.decisions:
            span = self._tracer.start_span("nexus.pipeline", context=ctx, start_time=at - int(seconds * 1e9),
                                           attributes=_attrs({
                "gen_ai.request.model": decision.requested_model, "nexus.resolved_model": decision.model,
                "nexus.decision": type(decision).__name__.lower(),
                "nexus.backend": decision.backend.name if isinstance(decision, Route) else None,
                "nexus.route_reason": decision.route_reason if isinstance(decision, Route) else None,
                "nexus.exclusions": len(decision.reasons)}))
            span.end(end_time=at)
        attempts = [(rec, at) for rec, at in obs.attempts]
        if obs.record is not None:
            attempts.append((obs.record, end))
        for rec, at in attempts:
            span = self._tracer.start_span("nexus.upstream", context=ctx, start_time=at - int(rec.latency_ms * 1e6),
                                           attributes=_attrs({
                "gen_ai.system": rec.backend_type, "gen_ai.request.model": rec.model, "nexus.backend": rec.backend,
                "gen_ai.usage.input_tokens": rec.prompt_tokens, "gen_ai.usage.output_tokens": rec.completion_tokens,
                "http.response.status_code": rec.status, "nexus.outcome": rec.outcome}))
            if rec.outcome not in ("ok",):
                span.set_status(trace.StatusCode.ERROR, rec.outcome)
            span.end(end_time=at)
        if obs.status >= 500:
            root.set_status(trace.StatusCode.ERROR, obs.error or str(obs.status))
        root.end(end_time=end)

    def _remember(self, obs: RequestObservation) -> None:
        decision, seconds, at = obs.decisions[-1]
        doc = explain(decision)
        self._metrics.observe_steps(decision.trace)
        item = {
            "at": at / 1e9, "request_id": obs.request_id, "decision": doc["decision"],
            "requested_model": doc["requested_model"], "resolved_model": doc["resolved_model"],
            "backend": doc.get("backend"), "route_reason": doc.get("route_reason") or doc.get("queue_reason"),
            "excluded": len(decision.reasons), "status": obs.status, "pipeline_us": round(seconds * 1e6, 1),
            "steps": [{"reconciler": s["reconciler"], "remaining": s["remaining"],
                       "excluded": [r["agent_id"] for r in s["excluded"]]} for s in doc["steps"]],
            "reasons": doc["rejection_reasons"],
        }
        self._ring.appendleft(orjson.dumps(item))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._write_ring())

    async def _write_ring(self) -> None:
        await asyncio.sleep(RING_FLUSH_SECONDS)  # one write for the decisions of half a second
        items = list(self._ring)
        self._ring.clear()
        key = keys.decisions(self._node)
        try:
            with guard("writing recent decisions"):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.lpush(key, *reversed(items))
                    pipe.ltrim(key, 0, self._kept - 1)
                    pipe.expire(key, keys.DECISIONS_TTL_SECONDS)
                    await pipe.execute()
        except StateError as exc:  # the dashboard misses them; routing does not care
            log.debug("recent decisions not written: %s", exc)

    async def close(self) -> None:
        if self._flush is not None and not self._flush.done():
            with contextlib.suppress(asyncio.CancelledError, StateError, TimeoutError):
                await asyncio.wait_for(self._flush, 2.0)
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is not None and hasattr(provider, "shutdown"):
            await asyncio.to_thread(provider.shutdown)  # flushes the last batch of spans


def _attrs(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
