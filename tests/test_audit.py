"""The audit log: one JSON line per compare/calibrate run that got past its flags, appended
atomically by concurrent processes, never holding text (tests/test_phi.py scans a full run's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qeval.run import audit_log as audit
from qeval.cli import app

runner = CliRunner()
SECRET = "PHIMARK-audit-7f3c-patient-Jane-Roe"


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "audit" / "audit.jsonl"
    monkeypatch.setenv("QEVAL_AUDIT_LOG", str(path))
    return path


def test_default_location_is_the_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("QEVAL_AUDIT_LOG", raising=False)
    monkeypatch.setenv("QEVAL_CACHE", str(tmp_path / "cache"))
    assert audit.audit_path() == tmp_path / "cache" / "audit.jsonl"
    monkeypatch.setenv("QEVAL_AUDIT_LOG", str(tmp_path / "elsewhere.jsonl"))
    assert audit.audit_path() == tmp_path / "elsewhere.jsonl"


def test_two_runs_append_two_lines_with_ids_and_hashes(log, tmp_path):
    (tmp_path / "taken").mkdir()
    args = ["compare", "--tasks", "clinical_core,clinical_reference", "--limit", "5", "--candidates", "int8,nf4",
            "--out", str(tmp_path / "taken")]
    for _ in range(2):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "already exists" in res.output  # found after the tasks loaded
    first, second = _lines(log)
    for e in (first, second):
        assert e["schema"] == "qeval.audit/1" and e["command"] == "compare"
        assert e["outcome"] == "error" and e["error"] == "QevalInputError" and e["exit_code"] == 2
        assert e["verdict"] is None and e["per_candidate"] is None
        assert e["user"] and e["host"] and e["qeval_version"] and e["time"].endswith("+00:00")
        assert e["argv"] == ["qeval", "compare", "--candidates", "int8,nf4", "--tasks",
                             "clinical_core,clinical_reference", "--out", str(tmp_path / "taken"), "--limit", "5"]
        assert e["model"] == {"spec": "smollm2-135m", "fingerprint": None}  # not resolved yet
        assert [(v["role"], v["name"], v["key"]) for v in e["variants"]] == [
            ("baseline", "fp16", "hf:fp16:"), ("candidate", "int8", "hf:int8:threshold=6.0"),
            ("candidate", "nf4", "hf:nf4:double_quant=False")]
        tasks = {t["id"]: t for t in e["tasks"]}
        assert {k: (t["n"], t["version"], t["kind"]) for k, t in tasks.items()} == {
            "clinical_core": (5, _version("clinical_core"), "multiple_choice"),
            "clinical_reference": (5, _version("clinical_reference"), "reference_text")}
        assert all(len(t["item_set_sha256"]) == 64 and len(t["content_hash"]) == 64 for t in tasks.values())
    assert first["item_set_sha256"] == second["item_set_sha256"]
    assert first["tasks"] == second["tasks"]


def test_item_set_hash_is_of_the_sorted_ids():
    assert audit.item_set_hash(["b", "a"]) == audit.item_set_hash(["a", "b"]) != audit.item_set_hash(["a"])


def test_bad_flags_before_the_config_write_no_line_and_unknown_tasks_one(log, tmp_path):
    res = runner.invoke(app, ["compare", "--candidates", "int9", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and not log.exists()  # never got a config: nothing was run
    res = runner.invoke(app, ["compare", "--tasks", "no_such_task", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    (e,) = _lines(log)
    assert e["tasks"] == [{"id": "no_such_task", "version": None, "content_hash": None, "n": None,
                           "item_set_sha256": None}]
    assert e["item_set_sha256"] is None and e["run_dir"] is None


def test_calibrate_runs_are_audited(log, tmp_path):
    (tmp_path / "taken").mkdir()
    res = runner.invoke(app, ["calibrate", "--methods", "gptq", "--sets", "generic", "--seeds", "1",
                              "--tasks", "clinical_core", "--limit", "3", "--out", str(tmp_path / "taken")])
    assert res.exit_code == 2, res.output
    (e,) = _lines(log)
    assert e["command"] == "calibrate" and e["error"] == "QevalInputError"
    assert [v["name"] for v in e["variants"]] == ["fp16", "gptq:calib=generic,seed=0"]


def test_a_failed_run_records_the_error_class_never_its_message(log, monkeypatch, tmp_path):
    import qeval.tasks.registry

    def boom(*a, **k):
        question = f"Does {SECRET} take warfarin?"
        raise ValueError(f"cannot parse {question!r}")

    monkeypatch.setattr(qeval.tasks.registry, "load_tasks", boom)
    res = runner.invoke(app, ["compare", "--tasks", "clinical_core", "--out", str(tmp_path / "r")])
    assert isinstance(res.exception, ValueError)  # a bug, not bad input: main() reports it
    (e,) = _lines(log)
    assert e["outcome"] == "error" and e["error"] == "ValueError" and e["exit_code"] == 1
    assert SECRET not in log.read_text() and "cannot parse" not in log.read_text()


def test_main_prints_where_a_bug_happened_without_its_message_or_locals(monkeypatch, capsys):
    import qeval.cli

    def app_that_fails():
        prompt = f"Patient {SECRET}, 82, on warfarin"  # a local holding text
        raise KeyError(prompt)

    monkeypatch.setattr(qeval.cli, "app", app_that_fails)
    with pytest.raises(SystemExit) as exit_info:
        qeval.cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "qeval: internal error: builtins.KeyError (message withheld" in err
    assert "app_that_fails" in err and SECRET not in err and "warfarin" not in err


def test_typer_never_shows_locals():
    assert app.pretty_exceptions_show_locals is False


def test_an_unwritable_audit_log_warns_and_keeps_the_outcome(monkeypatch, tmp_path):
    monkeypatch.setenv("QEVAL_AUDIT_LOG", str(tmp_path))  # a directory: cannot be opened for append
    (tmp_path / "taken").mkdir()
    res = runner.invoke(app, ["compare", "--tasks", "clinical_core", "--limit", "2", "--out", str(tmp_path / "taken")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith(f"qeval: warning: audit log {tmp_path} not written (")
    assert lines[1].startswith("qeval: error: run directory")


_WRITER = """
import sys
from qeval.run import audit_log as audit
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    audit.append({"writer": who, "i": i, "pad": "x" * 5000}, path=__import__("pathlib").Path(path))
"""


def test_concurrent_writers_append_whole_lines(tmp_path):
    """Lines longer than a pipe buffer from four processes at once: none torn, none lost."""
    path = tmp_path / "shared" / "audit.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), "50"]) for w in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = _lines(path)
    assert len(lines) == 200
    assert sorted((e["writer"], e["i"]) for e in lines) == sorted((str(w), i) for w in range(4) for i in range(50))
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only


def _version(task_id: str) -> int:
    from qeval.settings import resource_dir
    from qeval.tasks.registry import TaskRegistry

    return TaskRegistry([resource_dir("tasks")]).load(task_id).spec.version
