"""Pipeline decision time, in-process, over a warm snapshot.

Prints p50/p99 (microseconds) of one `decide()` for 10, 100 and 1,000 backends all serving the
requested model: a mix of local and cloud types and tiers, two overlapping policies, a global budget at
its soft limit, quality history on every backend and cluster-wide load. Each decision includes
requirements extraction from a small chat body. Targets (docs/architecture.md#performance-goals): p99 under 50 us at 10
backends, under 1 ms at 1,000.

    python bench/pipeline.py [--iterations N] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
from time import perf_counter_ns

from nexus.core.config import BackendConfig, BudgetConfig, DesiredConfig, PolicyConfig, RoutingConfig
from nexus.core.model import HealthState, QualityStats
from nexus.core.pipeline import Route, RoutingIntent, decide, extract_requirements
from nexus.core.snapshot import GLOBAL_SCOPE, BudgetObservation, HealthObservation, Observed, build_snapshot

TYPES = ("vllm", "ollama", "openai", "llamacpp", "anthropic", "generic")
BODY = {"model": "chat", "messages": [{"role": "user", "content": "Summarise the quarterly report in three lines."}],
        "max_tokens": 200}


def make_snapshot(n: int):
    backends = [
        BackendConfig(
            name=f"b{i:04d}", url=f"http://127.0.0.1:{10000 + i}", type=TYPES[i % len(TYPES)],
            secret="KEY" if TYPES[i % len(TYPES)] in ("openai", "anthropic") else None,
            tier=1 + i % 5, priority=i % 4, max_concurrency=16,
            models=[{"name": "llama3:70b", "context_length": 8192}, {"name": f"other-{i % 7}"}],
        )
        for i in range(n)
    ]
    routing = RoutingConfig(
        aliases={"chat": "llama3:70b"},
        policies=[PolicyConfig(model_pattern="llama3*", min_tier=2), PolicyConfig(model_pattern="llama3:*b")],
        budget=BudgetConfig(monthly_limit_usd=100.0, soft_limit_percent=0.75),
    )
    observed = Observed(
        health={b.name: HealthObservation(HealthState.HEALTHY, 0.0, (), 20.0 + i % 50) for i, b in enumerate(backends)},
        quality={b.name: QualityStats(error_rate_1h=(i % 10) / 20, avg_ttfb_ms_1h=100.0 * (i % 40), requests_1h=50)
                 for i, b in enumerate(backends)},
        spend={GLOBAL_SCOPE: BudgetObservation(80.0, "2026-11")},
        inflight={b.name: i % 16 for i, b in enumerate(backends)},
    )
    return build_snapshot(DesiredConfig(backends=backends, routing=routing), observed, version=1, now=1.0)


def measure(n: int, iterations: int) -> dict[str, float]:
    snap = make_snapshot(n)
    for _ in range(200):  # warm up
        decide(RoutingIntent("chat", extract_requirements(BODY)), snap)
    samples = []
    gc.collect()
    for i in range(iterations):
        t0 = perf_counter_ns()
        decision = decide(RoutingIntent("chat", extract_requirements(BODY), sequence=i), snap)
        samples.append((perf_counter_ns() - t0) / 1000.0)
    assert isinstance(decision, Route), decision
    samples.sort()
    return {
        "backends": n,
        "iterations": iterations,
        "p50_us": round(statistics.median(samples), 2),
        "p99_us": round(samples[int(len(samples) * 0.99) - 1], 2),
        "mean_us": round(statistics.fmean(samples), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    rows = []
    for n in (10, 100, 1000):
        iters = args.iterations if n < 1000 else max(1000, args.iterations // 10)
        rows.append(measure(n, iters))
        r = rows[-1]
        print(f"{r['backends']:>5} backends: p50 {r['p50_us']:>8.2f} us   p99 {r['p99_us']:>8.2f} us   "
              f"({r['iterations']} decisions)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"python": sys.version.split()[0], "machine": platform.machine(), "results": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
