"""The public Python API: `qeval.compare(...)` is the function `qeval compare` calls. Scored with
the fake backend through the engines seam (statistics and files, no model): the returned run
document is the run directory's, and the CLI given the same flags writes the same results.json.
Piped CLI output (a CI log) keeps every table row on one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import qeval
from qeval.engines.fake import FakeFactory

FLAGS = {"base": "fp32", "candidates": "int8:damage=0.3,nf4", "tasks": "clinical_core", "limit": 10,
         "n_boot": 200, "efficiency": False, "device": "cpu"}
CLI_FLAGS = ["--base", "fp32", "--candidates", "int8:damage=0.3,nf4", "--tasks", "clinical_core",
             "--limit", "10", "--n-boot", "200", "--no-efficiency", "--device", "cpu"]


class FakeEngines(FakeFactory):
    """The fake backend behind the engines seam: nothing to check before scoring."""

    artefacts: dict = {}

    def preflight(self, variants, tasks, *, allow_contamination=False):
        return {}


def fake_engines(resolved, tasks, cfg, ui):
    return FakeEngines(tasks)


def fake_model(root: Path) -> Path:
    """A checkpoint directory resolve_model accepts (the fake backend never reads it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"")
    return root


def _results(path: Path) -> dict:
    data = json.loads((path / "results.json").read_text())
    data.pop("created_at", None)
    return data


def test_api_compare_returns_the_run_document_and_matches_the_cli(tmp_path, monkeypatch):
    model = str(fake_model(tmp_path / "model"))
    # Each run in a folder of its own: earlier runs beside one feed its power table.
    api, cli = tmp_path / "api" / "run", tmp_path / "cli" / "run"
    run = qeval.compare(model=model, out=api, engines=fake_engines, **FLAGS)
    assert run.path == api
    assert run.results == json.loads((api / "results.json").read_text())
    assert run.results["verdict"] in ("GO", "NO_GO", "INCONCLUSIVE")
    assert run.candidates == ("int8:damage=0.3", "nf4") and run.baseline == "fp32"
    comps = {c["candidate"]: c for c in run.results["comparisons"]}
    assert comps["int8:damage=0.3"]["flips_correct_to_wrong"] > 0 == comps["nf4"]["flips_correct_to_wrong"]

    monkeypatch.setattr("qeval.run.app.engine_factory", fake_engines)
    from qeval.cli import app

    res = CliRunner().invoke(app, ["compare", "--model", model, "--out", str(cli), *CLI_FLAGS])
    assert res.exit_code == run.results["exit_code"], res.output
    assert _results(cli) == _results(api)


def test_api_bad_input_raises_before_any_model_time(tmp_path):
    from qeval.errors import QevalInputError

    with pytest.raises(QevalInputError, match="unknown variant 'int9'"):
        qeval.compare(model=str(tmp_path), candidates="int9", engines=fake_engines)
    with pytest.raises(ValueError, match="no_such_flag"):
        qeval.compare(no_such_flag=1)


# The CLI's real entry point in a child process, its engines replaced by the fake backend.
ENTRY = textwrap.dedent("""
    import sys

    sys.path.insert(0, sys.argv.pop(1))
    import qeval.run.app
    from test_api import fake_engines

    qeval.run.app.engine_factory = fake_engines
    from qeval.cli import main

    main()
""")


def test_piped_output_keeps_each_table_row_on_one_line(tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(
        [sys.executable, str(entry), str(Path(__file__).parent), "compare",
         "--model", str(fake_model(tmp_path / "model")), "--out", str(tmp_path / "run"), *CLI_FLAGS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 1, 3), proc.stderr
    lines = proc.stdout.splitlines()
    rows = [line for line in lines if line.startswith("│")]
    # One row per (task, candidate) in the verdict table, and the power table's rows: a wrapped
    # row would add continuation lines whose first cell is blank.
    assert rows and all(not line.startswith("│ " + " " * 3) for line in rows), proc.stdout
    verdict_rows = [line for line in rows if "clinical_core" in line and ("int8:damage" in line or "nf4" in line)]
    assert len(verdict_rows) == 2, proc.stdout
    assert all("…" not in line for line in rows), proc.stdout  # no cell cut short either
