"""The package layering of docs/architecture.md holds: the import-linter contract in pyproject.toml passes on the
tree, and fails when a lower layer imports a higher one (so the check itself cannot silently pass)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_layer_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        pytest.param("core/model.py", "nexus.router_node.handler", id="core-imports-router-node"),
        pytest.param("router_node/leases.py", "nexus.worker.jobs", id="router-node-imports-worker"),
        pytest.param("worker/jobs.py", "nexus.controlplane.admin", id="worker-imports-controlplane"),
        pytest.param("controlplane/admin/app.py", "nexus.tools.fake_backend", id="controlplane-imports-tools"),
        pytest.param("tools/devcluster.py", "nexus.cli", id="tools-import-the-composition-root"),
    ],
)
def test_an_upward_or_sideways_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    shutil.copytree(ROOT / "nexus", tmp_path / "nexus", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "nexus" / module
    target.write_text(target.read_text() + f"\nimport {upward}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and upward in result.stdout
