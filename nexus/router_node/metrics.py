"""Prometheus metrics of one router node (`GET /metrics`).

Each gateway gets its own `CollectorRegistry`, so several nodes in one process (tests, `nexus serve`)
never share or double-register series. Gauges that mirror state (snapshot age, budget, queue depth,
in-flight, and the fleet gauges below: `fleet`) are set at scrape time by the node (`RouterNode.render_metrics`),
not on the hot path.

Rust Nexus's names are served too, with its labels, so boards and alerts written for it keep working:
`nexus_request_duration_seconds{model,backend}`, `nexus_tokens_total{model,backend,type}`,
`nexus_cost_per_request_usd{model,backend}` (one observation per finished request, `observe_request`),
`nexus_backends_total`, `nexus_backends_healthy`, `nexus_models_available`, `nexus_pending_requests{backend}`,
`nexus_budget_limit_usd{scope}`, `nexus_budget_events_total{scope,event}`, and our own `nexus_backend_up{backend}`
and `nexus_redis_up` (set from the snapshot at scrape time, `fleet`; a budget event is a status change seen
between two scrapes), and
`nexus_reconciler_duration_seconds{reconciler}` (from sampled decisions' traces). `nexus_backend_latency_seconds`
is the health worker's (`nexus.worker.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from nexus.core.model import BudgetStatus, HealthState

if TYPE_CHECKING:
    from nexus.core.pipeline import TraceStep
    from nexus.core.snapshot import Snapshot

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_FAST = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_RUST = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)  # Rust Nexus's request-duration buckets
_USD = (0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nexus_requests",
            "Requests answered, by endpoint, backend and HTTP status",
            ["endpoint", "backend", "status"],
            registry=r,
        )
        self.errors = Counter("nexus_errors", "Requests that ended in an error, by kind", ["kind"], registry=r)
        self.fallbacks = Counter(
            "nexus_fallbacks", "Requests served by a fallback model", ["model", "fallback"], registry=r
        )
        self.failovers = Counter(
            "nexus_failovers", "Retries on the next candidate after an upstream failure", ["backend"], registry=r
        )
        self.exclusions = Counter(
            "nexus_exclusions", "Backends excluded by each reconciler", ["reconciler"], registry=r
        )
        self.pipeline_seconds = Histogram("nexus_pipeline_seconds", "Routing decision time", buckets=_FAST, registry=r)
        self.upstream_seconds = Histogram(
            "nexus_upstream_seconds", "Upstream request time (to last byte)", ["backend"], buckets=_SLOW, registry=r
        )
        self.ttfb_seconds = Histogram(
            "nexus_upstream_ttfb_seconds", "Upstream time to first byte", ["backend"], buckets=_SLOW, registry=r
        )
        self.queue_depth = Gauge("nexus_queue_depth", "Requests waiting in this replica's queue", registry=r)
        self.inflight = Gauge("nexus_inflight", "Requests in flight from this replica", ["backend"], registry=r)
        self.budget_utilization = Gauge(
            "nexus_budget_utilization", "Spend / limit of the current period", ["scope"], registry=r
        )
        self.budget_spend = Gauge("nexus_budget_spend_usd", "Spend of the current period", ["scope"], registry=r)
        self.budget_status = Gauge("nexus_budget_status", "0 normal, 1 soft limit, 2 hard limit", ["scope"], registry=r)
        self.snapshot_age = Gauge("nexus_snapshot_age_seconds", "Age of the routing snapshot", registry=r)
        self.snapshot_version = Gauge("nexus_snapshot_version", "Config version of the routing snapshot", registry=r)
        self.state_lost = Gauge(
            "nexus_state_lost", "1 while Redis has lost the shared state and this node routes on its snapshot",
            registry=r,
        )
        self.state_restores = Gauge(
            "nexus_state_restores", "Desired-config restores this node wrote after a Redis data loss", registry=r
        )
        self.snapshot_build_failures = Counter(
            "nexus_snapshot_build_failures",
            "Desired states that could not be decoded or built (the node kept its last good snapshot)",
            registry=r,
        )
        self.observed_age = Gauge(
            "nexus_observed_state_age_seconds", "Age of the newest health observation in the snapshot", registry=r
        )
        self.telemetry_buffered = Gauge("nexus_telemetry_buffered", "Telemetry records waiting for Redis", registry=r)
        self.telemetry_dropped = Counter(
            "nexus_telemetry_dropped", "Telemetry records dropped (buffer full)", registry=r
        )
        self.telemetry_quarantined = Counter(
            "nexus_telemetry_quarantined",
            "Telemetry records a flush quarantined instead of counting (GET /admin/v1/telemetry/quarantine)",
            registry=r,
        )
        self.telemetry_unreplicated = Counter(
            "nexus_telemetry_unreplicated",
            "Telemetry records written while fewer replicas than redis.replica_acks confirmed them",
            registry=r,
        )
        self.usage_estimated = Counter(
            "nexus_usage_estimated",
            "Requests billed from the gateway's estimate instead of the backend's usage, by reason",
            ["backend", "reason"],
            registry=r,
        )
        self.upstream_invalid = Counter(
            "nexus_upstream_invalid_responses",
            "Backend answers refused as malformed (failed over like any upstream failure)",
            ["backend"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "nexus_circuit_open", "1 while this replica's circuit for the backend is open", ["backend"], registry=r
        )
        self._rust(r)
        self._included: list[CollectorRegistry] = []

    def _rust(self, r: CollectorRegistry) -> None:
        self.request_duration = Histogram(
            "nexus_request_duration_seconds", "Whole request duration", ["model", "backend"], buckets=_RUST,
            registry=r,
        )
        self.tokens = Counter("nexus_tokens", "Tokens billed, by type (prompt, completion)",
                              ["model", "backend", "type"], registry=r)
        self.cost_per_request = Histogram(
            "nexus_cost_per_request_usd", "Cost of one request", ["model", "backend"], buckets=_USD, registry=r
        )
        self.reconciler_seconds = Histogram(
            "nexus_reconciler_duration_seconds", "Time of each pipeline step (sampled decisions)", ["reconciler"],
            buckets=_FAST, registry=r,
        )
        self.backends_total = Gauge("nexus_backends_total", "Configured backends", registry=r)
        self.backends_healthy = Gauge("nexus_backends_healthy", "Backends whose health checks pass", registry=r)
        self.models_available = Gauge("nexus_models_available", "Models served by a backend that is not unhealthy",
                                      registry=r)
        self.pending = Gauge("nexus_pending_requests", "Requests in flight from this replica", ["backend"],
                             registry=r)
        self.budget_limit = Gauge("nexus_budget_limit_usd", "Limit of the current period (absent: none)", ["scope"],
                                  registry=r)
        self.backend_up = Gauge("nexus_backend_up", "1 while a backend passes its health checks, 0 while it fails "
                                "them (absent: not checked yet)", ["backend"], registry=r)
        self.redis_up = Gauge("nexus_redis_up", "1 while this replica's last telemetry flush reached Redis",
                              registry=r)
        self.budget_events = Counter("nexus_budget_events", "Budget status changes (soft_limit, hard_limit, normal)",
                                     ["scope", "event"], registry=r)
        self._budget_seen: dict[str, BudgetStatus] = {}

    def observe_request(
        self, model: str, backend: str, seconds: float, prompt_tokens: int, completion_tokens: int, cost_usd: float
    ) -> None:
        """One finished request that reached a backend (Rust Nexus's per-request series)."""
        self.request_duration.labels(model, backend).observe(seconds)
        if prompt_tokens:
            self.tokens.labels(model, backend, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(model, backend, "completion").inc(completion_tokens)
        self.cost_per_request.labels(model, backend).observe(cost_usd)

    def observe_steps(self, steps: Iterable[TraceStep]) -> None:
        for step in steps:
            self.reconciler_seconds.labels(step.reconciler).observe(step.duration_us / 1e6)

    def fleet(self, snap: Snapshot | None, inflight: Mapping[str, int], redis_ok: bool) -> None:
        """Scrape time: the fleet gauges from the snapshot this node routes on."""
        self.redis_up.set(1 if redis_ok else 0)
        self.pending.clear()
        for name, n in inflight.items():
            self.pending.labels(name).set(n)
        if snap is None:
            return
        self.backends_total.set(len(snap.backends))
        self.backend_up.clear()
        for name, b in snap.backends.items():
            if b.health in (HealthState.HEALTHY, HealthState.UNHEALTHY):
                self.backend_up.labels(name).set(1 if b.health is HealthState.HEALTHY else 0)
        self.backends_healthy.set(sum(1 for b in snap.backends.values() if b.health is HealthState.HEALTHY))
        self.models_available.set(
            sum(1 for bs in snap.by_model.values() if any(b.health is not HealthState.UNHEALTHY for b in bs))
        )
        self.budget_limit.clear()
        for scope, state in snap.budgets.items():
            if state.monthly_limit_usd is not None:
                self.budget_limit.labels(scope).set(state.monthly_limit_usd)
            status = state.status()
            before = self._budget_seen.get(scope, BudgetStatus.NORMAL)
            if status is not before:
                self.budget_events.labels(scope, status.value).inc()
            self._budget_seen[scope] = status

    def include(self, registry: CollectorRegistry) -> None:
        """Serve another registry's series here too (`nexus serve`: the worker loops' metrics)."""
        self._included.append(registry)

    def render(self) -> bytes:
        return generate_latest(self.registry) + b"".join(generate_latest(r) for r in self._included)
