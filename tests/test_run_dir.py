"""The run directory appears whole or not at all: a failure while writing it leaves no partial
folder, and so no opted-in text outside a finished run."""

from __future__ import annotations

import pytest

from conftest import fake_config, fake_variant, make_task
from qeval import html_report
from qeval.backends.fake import FakeFactory
from qeval.console import QuietUI
from qeval.gate import GatePolicy
from qeval.pipeline import run_compare
from qeval.report import results_dict, write_run


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    task = make_task(40)
    cfg = fake_config(fake_variant("base"), fake_variant("c", damage=0.2)).model_copy(
        update={"efficiency": None, "log_text": True})
    res = run_compare(cfg, [task], factory=FakeFactory([task]), store=None, model_fingerprint="f",
                      policy=GatePolicy(), ui=QuietUI())
    results = results_dict(res, model={"source": "fake", "fingerprint": "f" * 64}, policy={})

    def broken(run_dir):
        assert (run_dir / "texts" / "prompts.jsonl").is_file()  # the texts were written by then
        raise RuntimeError("disk full")

    monkeypatch.setattr(html_report, "write_html", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_run(tmp_path / "run", res, results, log_text=True)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_run(tmp_path / "run", res, results, log_text=True)
    assert {p.name for p in tmp_path.iterdir()} == {"run"}
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "texts").is_dir()
