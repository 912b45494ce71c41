"""Prometheus metrics of one router node (`GET /metrics`).

Each gateway gets its own `CollectorRegistry`, so several nodes in one process (tests, `nexus serve`)
never share or double-register series. Gauges that mirror state (snapshot age, budget, queue depth,
in-flight) are set at scrape time by the node (`RouterNode.render_metrics`), not on the hot path.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_FAST = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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
        self._included: list[CollectorRegistry] = []

    def include(self, registry: CollectorRegistry) -> None:
        """Serve another registry's series here too (`nexus serve`: the worker loops' metrics)."""
        self._included.append(registry)

    def render(self) -> bytes:
        return generate_latest(self.registry) + b"".join(generate_latest(r) for r in self._included)
