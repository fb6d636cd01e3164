"""The layering (pyproject.toml [tool.importlinter], docs/ARCHITECTURE.md) holds: each layer
imports only the layers below it, reading a finished run never loads the pipeline or an engine,
and no two sibling modules or packages import each other, at any depth."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]' (import-linter)")
    return subprocess.run([str(exe), "--no-cache", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    proc = _lint()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in ("Each layer imports only the layers below it", "No import cycles between sibling"):
        assert name in proc.stdout


def test_a_layer_violation_is_caught(tmp_path):
    """The same contracts on a copy of the package where a low layer imports a high one."""
    pkg = tmp_path / "qeval"
    shutil.copytree(ROOT / "qeval", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    stats = pkg / "stats.py"
    stats.write_text(stats.read_text() + "\n\ndef _upward():\n    from qeval.run import pipeline  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    assert "qeval.stats -> qeval.run.pipeline" in proc.stdout
