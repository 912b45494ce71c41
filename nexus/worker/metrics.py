"""Prometheus metrics of the worker loops: one registry per process (a worker process runs one arq worker;
`nexus serve` serves it on the gateway's `/metrics` too, `nexus worker --metrics-port` on a port of its own).

- `nexus_telemetry_quarantined_total`: records the rollup could not count (kept in the quarantine).
- `nexus_aggregate_inconsistencies_total{period}`: budget ticks that found a period's totals differing from
  the sum of a breakdown (backend, model); each is also logged with the figures.
- `nexus_unreconciled_usd_total`: USD charged for dead router nodes' admitted, never recorded requests.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

__all__ = ["AGGREGATE_INCONSISTENCIES", "QUARANTINED", "REGISTRY", "UNRECONCILED_USD"]

REGISTRY = CollectorRegistry(auto_describe=True)
QUARANTINED = Counter(
    "nexus_telemetry_quarantined", "Telemetry records the rollup quarantined instead of counting", registry=REGISTRY
)
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
