"""bench/cluster_scale.py runs end to end: a smoke run with two replicas and short phases writes the figures
it promises. Its numbers are the benchmark's business (docs/capacity.md), not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_scale_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster_scale.py"), "--replicas", "2", "--seconds", "1",
         "--rate", "5", "--total-rps", "40", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    (cell,) = result["cells"]
    assert cell["replicas"] == 2 and cell["failed"] == 0
    assert cell["phases"]["low"]["served"] > 0 and cell["phases"]["high"]["served"] > cell["phases"]["low"]["served"]
    assert cell["idle_commands_per_replica_s"] > 0  # heartbeats and polls reach Redis even without traffic
    assert all(c > 0 for c in cell["redis_commands_per_s"])
    assert "N=2" in proc.stdout
