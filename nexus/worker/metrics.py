"""Prometheus metrics of the worker loops: one registry per process (a worker process runs one arq worker;
`nexus serve` serves it on the gateway's `/metrics` too, `nexus worker --metrics-port` on a port of its own).

- `nexus_aggregate_inconsistencies_total{period}`: budget ticks that found a period's totals differing from
  the sum of a breakdown (backend, model); each is also logged with the figures.
- `nexus_unreconciled_usd_total`: USD charged for dead router nodes' admitted, never recorded requests.
- `nexus_worker_tick_duration_seconds{job}` / `nexus_worker_tick_failures_total{job}`: each loop's ticks.
- `nexus_backend_latency_seconds{backend}`: health probe latency (Rust Nexus's name).
- `nexus_rollup_last_success_timestamp_seconds` and `nexus_rollup_lag_seconds` (seconds since then, at
  scrape time; 0 before the first of this process): the last completed budget tick, which observes every
  budget from the aggregates (the names are kept from when the tick also rolled records up).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "AGGREGATE_INCONSISTENCIES",
    "BACKEND_LATENCY",
    "REGISTRY",
    "ROLLUP_LAST_SUCCESS",
    "TICK_FAILURES",
    "TICK_SECONDS",
    "UNRECONCILED_USD",
]

REGISTRY = CollectorRegistry(auto_describe=True)
AGGREGATE_INCONSISTENCIES = Counter(
    "nexus_aggregate_inconsistencies",
    "Budget ticks whose period aggregate totals differ from the sum of a breakdown",
    ["period"],
    registry=REGISTRY,
)
UNRECONCILED_USD = Counter(
    "nexus_unreconciled_usd", "USD charged for requests dead router nodes admitted and never recorded",
    registry=REGISTRY,
)
TICK_SECONDS = Histogram(
    "nexus_worker_tick_duration_seconds",
    "Duration of one worker loop tick",
    ["job"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
TICK_FAILURES = Counter(
    "nexus_worker_tick_failures", "Worker loop ticks that raised (the next tick retries)", ["job"], registry=REGISTRY
)
BACKEND_LATENCY = Histogram(
    "nexus_backend_latency_seconds",
    "Health probe latency per backend",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
_ROLLUP_DONE = Gauge(
    "nexus_rollup_last_success_timestamp_seconds",
    "Unix time of this process's last completed telemetry rollup (budget tick)",
    registry=REGISTRY,
)
_ROLLUP_LAG = Gauge(
    "nexus_rollup_lag_seconds", "Seconds since this process's last completed telemetry rollup", registry=REGISTRY
)


class _RollupClock:
    """The last completed rollup's time, set by budget ticks; the lag gauge reads it at scrape time."""

    def __init__(self) -> None:
        self.last = 0.0

    def set(self, at: float) -> None:
        self.last = at
        _ROLLUP_DONE.set(at)

    def lag(self) -> float:
        return max(0.0, time.time() - self.last) if self.last else 0.0


ROLLUP_LAST_SUCCESS = _RollupClock()
_ROLLUP_LAG.set_function(ROLLUP_LAST_SUCCESS.lag)
