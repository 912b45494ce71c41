"""The gateway benchmark harness runs end to end and writes what it promises.

A smoke run of `bench/gateway.py --quick --no-cluster` into a temporary directory: plausible numbers and
the expected keys only. Speed goals live in the benchmark's output, never here (docs/architecture.md#performance-goals).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_wrk_is_installed():
    # the harness's load generator; .ci/run installs it, like nginx
    assert shutil.which("wrk"), "wrk is not installed: apt-get install wrk"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gateway.py"),
            "--quick",
            "--no-cluster",
            "--warmup",
            "0",
            "--pipeline-iterations",
            "500",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    return proc, out


def test_runs_and_writes_both_json_files(run) -> None:
    proc, out = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stamped = list(out.glob("gateway-*.json"))
    assert len(stamped) == 1
    assert stamped[0].read_text() == (out / "latest.json").read_text()
    assert "JSON chat: direct to the fake backend vs through the gateway" in proc.stdout
    assert "goals (docs/architecture.md#performance-goals" in proc.stdout


def test_result_has_the_expected_shape_and_plausible_numbers(run) -> None:
    proc, out = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "latest.json").read_text())
    assert {
        "schema",
        "command",
        "machine",
        "settings",
        "pinning",
        "pipeline",
        "single",
        "cluster",
        "goals",
        "chart",
        "started_at",
        "finished_at",
    } <= result.keys()
    assert "--quick" in result["command"]
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["versions"]["wrk"]
    assert result["settings"]["concurrency"] == [1, 32] and result["settings"]["duration_s"] == 1.0
    assert isinstance(result["pinning"]["enabled"], bool) and result["pinning"]["note"]

    assert [r["backends"] for r in result["pipeline"]["rows"]] == [10, 100, 1000]
    assert all(0 < r["p50_us"] <= r["p99_us"] for r in result["pipeline"]["rows"])

    cells = result["single"]["cells"]
    assert {(c["kind"], c["concurrency"]) for c in cells} == {("json", 1), ("json", 32), ("stream", 1), ("stream", 32)}
    for cell in cells:
        for target in ("direct", "gateway"):
            r = cell[target]
            assert r["requests"] > 0 and r["rps"] > 0, (cell["kind"], cell["concurrency"], target, r)
            assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
            assert r["error_total"] == 0, r  # every answer 2xx, no socket errors: a correctness check
        assert set(cell["added_ms"]) == {"p50", "p90", "p99"}
        gateway_cpu = cell["gateway"]["cpu"]["gateway"]
        assert gateway_cpu["cpu_s"] > 0 and gateway_cpu["us_per_request"] > 0
        assert "gateway" not in cell["direct"]["cpu"]
    memory = result["single"]["gateway_memory"]
    assert 0 < memory["rss_after_start_mb"] <= memory["peak_rss_mb"]
    assert result["cluster"] == {"skipped": "--no-cluster"}
    assert {g["goal"] for g in result["goals"]} >= {"gateway added p50, JSON, 1 client (ms)"}
    # matplotlib is a dev dependency: the chart is always drawn here, never silently skipped
    assert result["chart"]["path"] == "latest.png", result["chart"]
    png = (out / "latest.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
