"""Where qeval finds things (qeval/settings.py), the one YAML loader, the one error hierarchy,
tasks given by path, and the GPTQ child's import path. No model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import qeval
from qeval import errors, settings
from qeval.cli import app
from qeval.errors import QevalInputError
from qeval.tasks.registry import expand_task_refs, is_task_path, load_tasks
from qeval.util.yamlio import read_yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Mrs Jane Example, DOB 1950-01-01"  # stands for patient-derived text in a broken file


def test_a_checkout_finds_its_top_level_folders():
    for name in settings.RESOURCES:
        assert settings.resource_dir(name) == ROOT / name
    with pytest.raises(ValueError):
        settings.resource_dir("notebooks")


def test_cache_and_audit_paths_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("QEVAL_AUDIT_LOG", raising=False)
    assert settings.cache_dir() == tmp_path / "c" and settings.audit_path() == tmp_path / "c" / "audit.jsonl"
    monkeypatch.setenv("QEVAL_AUDIT_LOG", str(tmp_path / "a.jsonl"))
    assert settings.audit_path() == tmp_path / "a.jsonl"


def _broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"id: x\nnote: [{SECRET},\n  unclosed: {SECRET}\n")
    return path


def test_every_yaml_reader_names_file_and_line_and_never_quotes_the_file(tmp_path):
    from qeval.gate import GatePolicy
    from qeval.quantize.calibration_sets import load_builtin
    from qeval.tasks.registry import load_task

    readers = {
        "loader": lambda p: read_yaml(p),
        "task": lambda p: load_task(p),
        "gate policy": lambda p: GatePolicy.from_yaml(p),
        "calibration manifest": lambda p: load_builtin(p.parent),
    }
    for what, read in readers.items():
        path = _broken(tmp_path / what.replace(" ", "_") / ("manifest.yaml" if "manifest" in what else "f.yaml"))
        with pytest.raises(QevalInputError) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(f"{path} line 4: not valid YAML (") and "starts at line 2" in message, (what, message)
        assert SECRET not in message and "Jane" not in message and "\n" not in message, (what, message)


def test_yaml_loader_reports_unreadable_and_empty_files(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("a: caf\xe9\n".encode("latin-1"))
    with pytest.raises(QevalInputError, match=r"latin1.yaml: not UTF-8 text \(byte 6\)"):
        read_yaml(tmp_path / "latin1.yaml")
    with pytest.raises(QevalInputError, match="missing.yaml: cannot read"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert read_yaml(tmp_path / "empty.yaml") is None and read_yaml(tmp_path / "empty.yaml", empty={}) == {}


def test_one_error_hierarchy_keeps_its_old_names_and_bases():
    from qeval.engines.base import NonFiniteScores
    from qeval.pairing import PairingError, PromptMismatch
    from qeval.tasks.registry import MissingData

    assert (NonFiniteScores, PairingError, PromptMismatch, MissingData) == (
        errors.NonFiniteScores, errors.PairingError, errors.PromptMismatch, errors.MissingData)
    for cls in (NonFiniteScores, PairingError, PromptMismatch, MissingData):
        assert issubclass(cls, QevalInputError)
    for cls in (NonFiniteScores, PairingError, PromptMismatch):  # as before: still ValueErrors
        assert issubclass(cls, errors.ScoringError) and issubclass(cls, ValueError)
    defined = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)}
    assert defined == {"QevalInputError", "MissingData", "ScoringError", "NonFiniteScores", "PromptMismatch",
                       "PairingError", "JobFailed"}
    assert issubclass(errors.JobFailed, QevalInputError)


def _own_task(folder: Path, task_id: str = "own_task") -> Path:
    init = ROOT / "configs" / "init" / "tasks" / "my_task"
    (folder / "items").mkdir(parents=True)
    (folder / "items" / "example.yaml").write_text((init / "items" / "example.yaml").read_text())
    spec = (init / "my_task.yaml").read_text().replace("id: my_task", f"id: {task_id}")
    (folder / f"{task_id}.yaml").write_text(spec)
    return folder / f"{task_id}.yaml"


def test_tasks_are_given_by_id_file_or_folder(tmp_path, monkeypatch):
    assert [is_task_path(e) for e in ("clinical_core", "lm-eval:pubmedqa", "a.yaml", "./x", "d/e", "~/t")] == [
        False, False, True, True, True, True]
    one = _own_task(tmp_path / "mine" / "one", "own_one")
    two = _own_task(tmp_path / "mine" / "two", "own_two")
    monkeypatch.chdir(tmp_path)
    assert expand_task_refs(["clinical_core", "mine/one/own_one.yaml"]) == ("clinical_core", str(one))
    assert expand_task_refs(["./mine"]) == (str(one), str(two))  # the folder's task files, not items/
    loaded, _ = load_tasks(["clinical_core", str(two)], roots=[settings.resource_dir("tasks")], data_dir=None,
                           limit=3)
    assert [(t.spec.id, t.size(), t.path) for t in loaded] == [
        ("clinical_core", 3, str(settings.resource_dir("tasks") / "clinical_core" / "clinical_core.yaml")),
        ("own_two", 3, str(two))]
    with pytest.raises(QevalInputError, match="task id 'own_one' is given twice"):
        load_tasks([str(one), str(one)], roots=[], data_dir=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QevalInputError, match="holds no task files"):
        expand_task_refs(["./empty"])


@pytest.mark.parametrize("given,match", [
    ("no/such/task.yaml", "--tasks no/such/task.yaml: no such file or folder"),
    ("clinical_core,./notes.txt", "--tasks ./notes.txt: .* is not a .yaml task file"),
])
def test_a_bad_task_path_is_one_line_and_exit_2(given, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a task")
    res = CliRunner().invoke(app, ["compare", "--tasks", given, "--candidates", "int8"])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line.startswith("qeval: error: ")
    import re

    assert re.search(match, " ".join(line.split())), line


def test_the_gptq_child_imports_the_parents_qeval_without_pythonpath(tmp_path):
    from qeval.quantize.gptq_awq import CHILD_BOOT, child_job

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD_BOOT + "import qeval; print(qeval.__file__, job)"],
                          input=child_job({"n": 1}), capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().split() == [qeval.__file__, "{'n':", "1}"]
