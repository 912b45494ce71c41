"""Nexus workers: arq cron loops that keep what router-node snapshots observe true.

- health (`nexus.worker.health`, `nexus.worker.probe`): probes every backend concurrently, steps a state machine
  (healthy / unhealthy / loading / unknown with failure and recovery thresholds), discovers models,
  keeps a latency EMA;
- budget: observes every budget's spend and status from the per-period aggregates router nodes' telemetry
  batches write (`nexus.core.aggregate_store`, `nexus.core.spend_report`), and repairs live spend from them;
- quality: per-backend error rate, TTFB and success rate from the quality minutes of the same batches;
- nodes: marks router nodes that stopped heart-beating as gone and drops their load gauges.

Layout: pure decisions in `nexus.worker.health`, `nexus.worker.reconcilers` and `nexus.worker.schedule`; I/O at the
edges in `nexus.worker.probe` (HTTP), `nexus.worker.store` and `nexus.core.aggregate_store` (Redis); tick bodies in
`nexus.worker.jobs`; arq wiring in `nexus.worker.settings`; process entry points in `nexus.worker.main`
(`run_worker` for `nexus worker`, `start_in_process` for `nexus serve`).

Intervals are rounded down to an even UTC wall-clock grid (`nexus.worker.schedule`): below a minute to a
divisor of 60 s, below an hour to a divisor of 60 min, else to a divisor of 24 h.
"""

__all__: list[str] = []
