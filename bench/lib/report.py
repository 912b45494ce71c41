"""The gateway benchmark's human outputs: progress lines, the summary table and the 2x2 chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["cell_line", "chart", "cluster_line", "summary"]

NOISY_PCT = 5.0  # other processes' share of a measured CPU above which a result is flagged as noisy
KIND_TITLE = {"json": "JSON chat", "stream": "streaming chat (SSE)"}


def _pct(run: dict) -> str:
    return f"{run['p50_ms']:.2f}/{run['p90_ms']:.2f}/{run['p99_ms']:.2f}"


def _err(run: dict) -> str:
    return f"  ERRORS {run['errors']}" if run.get("error_total") else ""


def cell_line(cell: dict) -> str:
    d, g = cell["direct"], cell["gateway"]
    return (
        f"{cell['kind']:<6} c={cell['concurrency']:<4} direct {d['rps']:>9,.0f} req/s p50 {d['p50_ms']:.2f} ms | "
        f"gateway {g['rps']:>8,.0f} req/s p50 {g['p50_ms']:.2f} ms | added p50 {cell['added_ms']['p50']:+.2f} ms"
        f"{_err(d)}{_err(g)}"
    )


def cluster_line(cell: dict) -> str:
    r = cell["cluster"]
    return f"json   c={cell['concurrency']:<4} via nginx {r['rps']:>8,.0f} req/s p50 {r['p50_ms']:.2f} ms{_err(r)}"


def _cpu_per_request(cpu: dict) -> str:
    """'during+after us': CPU per request during the cell, plus background work it left (worker ticks)."""
    during, total = cpu.get("us_per_request"), cpu.get("us_per_request_with_background")
    if not during:
        return "-"
    return f"{during:.0f}+{max(0.0, total - during):.0f} us" if total else f"{during:.0f} us"


def _noise(*runs: dict) -> str:
    """Share of the gateway's / the load side's CPUs used by other processes (max over the runs)."""
    vals = [r["noise"] for r in runs if r.get("noise")]
    if not vals:
        return "-"
    g = max(v["gateway_cpus_other_pct"] or 0 for v in vals)
    ld = max(v["load_cpus_other_pct"] or 0 for v in vals)
    return f"{g:.0f}%/{ld:.0f}%"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def summary(result: dict[str, Any]) -> str:
    parts: list[str] = []
    m = result["machine"]
    parts.append(
        f"Nexus gateway benchmark  {result['started_at']}  commit {m.get('git_commit')}"
        f"{' (dirty)' if m.get('git_dirty') else ''}\n"
        f"machine: {m['cores']} cores ({m.get('cpu_model')}), Python {m['python']}, "
        f"load average before {m['loadavg_before'][0]:.2f}, after {m['loadavg_after'][0]:.2f}\n"
        f"pinning: {result['pinning']['note']}"
        + (f"\n  pinning failures: {len(result['pinning']['failures'])}" if result["pinning"]["failures"] else "")
        + f"\ncommand: {result['command']}\n"
        f"{result['settings']['duration_s']:g} s per cell, wrk -t1; latency p50/p90/p99 in ms; "
        "added = gateway minus direct; CPU/req = gateway process CPU time per request during the cell + after it "
        "(background work the cell left, e.g. the in-process worker's ticks); gw cores = its CPU use; "
        "other load = share of the gateway's / load side's CPUs used by processes not started here, "
        "during the gateway run (noise)"
    )
    cells = result.get("single", {}).get("cells", [])
    for kind in ("json", "stream"):
        rows = []
        for c in (c for c in cells if c["kind"] == kind):
            d, g, a = c["direct"], c["gateway"], c["added_ms"]
            errs = d["error_total"] + g["error_total"]
            rows.append(
                [
                    str(c["concurrency"]),
                    f"{d['rps']:,.0f}",
                    f"{g['rps']:,.0f}",
                    f"{c['rps_ratio']:.2f}" if c["rps_ratio"] is not None else "-",
                    _pct(d),
                    _pct(g),
                    f"{a['p50']:+.2f}/{a['p90']:+.2f}/{a['p99']:+.2f}",
                    _cpu_per_request(g["cpu"]["gateway"]),
                    f"{g['cpu']['gateway']['cores_busy']:.2f}",
                    _noise(g),
                    str(errs),
                ]
            )
        if rows:
            parts.append(f"\n{KIND_TITLE[kind]}: direct to the fake backend vs through the gateway")
            parts.append(
                _table(
                    [
                        "c",
                        "direct req/s",
                        "gateway req/s",
                        "ratio",
                        "direct p50/p90/p99",
                        "gateway p50/p90/p99",
                        "added p50/p90/p99",
                        "CPU/req",
                        "gw cores",
                        "other load",
                        "errors",
                    ],
                    rows,
                )
            )
    mem = result.get("single", {}).get("gateway_memory")
    if mem:
        parts.append(
            f"gateway memory: RSS {mem['rss_after_start_mb']} MB after start, {mem['rss_end_mb']} MB at the end, "
            f"peak (VmHWM) {mem['peak_rss_mb']} MB"
        )
    idle = result.get("single", {}).get("gateway_idle")
    if idle:
        parts.append(f"gateway idle (no traffic, {idle['seconds']:g} s): {idle['cores_busy'] * 100:.1f}% of a core")
    pipe = result.get("pipeline", {}).get("rows", [])
    if pipe:
        other = result["pipeline"].get("other_load_pct")
        parts.append(
            f"\npipeline decision time (in-process, bench/pipeline.py, best of {pipe[0].get('rounds', 1)} by p99"
            + (f"; other processes used {other:.0f}% of its CPU meanwhile" if other is not None else "")
            + ")"
        )
        parts.append(
            _table(
                ["backends", "p50 us", "p99 us", "decisions"],
                [
                    [f"{r['backends']:,}", f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['iterations']:,}"]
                    for r in pipe
                ],
            )
        )
    cl = result.get("cluster", {})
    if cl.get("skipped"):
        parts.append(f"\ncluster: skipped ({cl['skipped']})")
    else:
        if cl.get("cells"):
            parts.append(f"\n{cl['replicas']}-replica cluster behind nginx (JSON chat); added vs the direct run above")
            rows = []
            for c in cl["cells"]:
                r, a = c["cluster"], c.get("added_vs_direct_ms")
                rows.append(
                    [
                        str(c["concurrency"]),
                        f"{r['rps']:,.0f}",
                        _pct(r),
                        f"{a['p50']:+.2f}/{a['p90']:+.2f}/{a['p99']:+.2f}" if a else "-",
                        f"{r['cpu']['routers']['us_per_request']:.0f} us"
                        if r["cpu"]["routers"]["us_per_request"]
                        else "-",
                        f"{r['cpu']['nginx']['us_per_request']:.0f} us" if r["cpu"]["nginx"]["us_per_request"] else "-",
                        _noise(r),
                        str(r["error_total"]),
                    ]
                )
            parts.append(
                _table(
                    [
                        "c",
                        "req/s",
                        "p50/p90/p99",
                        "added p50/p90/p99",
                        "routers CPU/req",
                        "nginx CPU/req",
                        "other load",
                        "errors",
                    ],
                    rows,
                )
            )
        elif cl.get("note"):
            parts.append(f"\ncluster: {cl['note']}")
        prop = cl.get("propagation")
        if prop:
            a, b = prop["put_to_all_replicas"], prop["ack_to_all_replicas"]
            parts.append(
                f"\nadmin change visible on all {prop['replicas']} replicas ({prop['changes']} changes, "
                f"/ready polled every {prop['poll_ms']:g} ms):\n"
                f"  from PUT sent: p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms, max {a['max_ms']:.1f} ms\n"
                f"  from PUT's 200: p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms "
                f"(PUT round trip p50 {prop['put_round_trip']['p50_ms']:.1f} ms)"
            )
    goals = result.get("goals", [])
    if goals:
        parts.append("\ngoals (docs/architecture.md#performance-goals; reported here, never asserted by tests)")
        for g in goals:
            mark = "MET " if g["met"] else "MISS"
            noisy = g.get("noise_pct") or 0
            note = f"; measured with {noisy:.0f}% of that CPU used by other processes" if noisy >= NOISY_PCT else ""
            parts.append(f"  [{mark}] {g['goal']}: {g['value']:,} (target {g['target']}{note})")
    return "\n".join(parts)


def chart(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """2x2 PNG: rows JSON / streaming; left latency percentiles, right requests/s, by concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"path": None, "note": "matplotlib not installed (pip install -e '.[bench]')"}
    cells = result.get("single", {}).get("cells", [])
    if not cells:
        return {"path": None, "note": "no cells measured"}
    cluster = {c["concurrency"]: c["cluster"] for c in result.get("cluster", {}).get("cells", []) or []}
    colors = {"direct": "#4c72b0", "gateway": "#dd8452", "cluster": "#55a868"}
    labels = {"direct": "direct to fake", "gateway": "through gateway", "cluster": "3 replicas via nginx"}
    styles = {"p50": ("-", "o"), "p90": ("--", "s"), "p99": (":", "^")}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    for row, kind in enumerate(("json", "stream")):
        ks = sorted((c for c in cells if c["kind"] == kind), key=lambda c: c["concurrency"])
        if not ks:
            continue
        conc = [c["concurrency"] for c in ks]
        series = {"direct": [c["direct"] for c in ks], "gateway": [c["gateway"] for c in ks]}
        if kind == "json" and cluster:
            series["cluster"] = [cluster.get(c) for c in conc]
        ax = axes[row][0]
        for target, runs in series.items():
            for q, (ls, mk) in styles.items():
                xs = [c for c, r in zip(conc, runs, strict=True) if r]
                ys = [r[f"{q}_ms"] for r in runs if r]
                ax.plot(xs, ys, linestyle=ls, marker=mk, color=colors[target], label=f"{labels[target]} {q}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(f"{KIND_TITLE[kind]}: latency p50 / p90 / p99")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(series))
        ax = axes[row][1]
        width = 0.8 / len(series)
        for i, (target, runs) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(conc))]
            ys = [r["rps"] if r else 0 for r in runs]
            bars = ax.bar(xs, ys, width=width, color=colors[target], label=labels[target])
            ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=7, padding=2)
        ax.set_xticks(range(len(conc)), [str(c) for c in conc])
        ax.set_xlabel("concurrent connections (wrk -c)")
        ax.set_ylabel("requests/s")
        ax.set_title(f"{KIND_TITLE[kind]}: throughput")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(
        f"Nexus gateway vs direct, zero-latency fake backend ({result['settings']['duration_s']:g} s per cell, "
        f"wrk -t1, {m['cores']} cores, {'pinned' if result['pinning']['enabled'] else 'unpinned'}, "
        f"load avg {m['loadavg_before'][0]:.1f}, "
        f"{result['started_at']})",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, pil_kwargs={"optimize": True})
    plt.close(fig)
    return {"path": path.name, "note": "latency percentiles and requests/s by concurrency"}
