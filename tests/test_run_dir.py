"""The run directory appears whole or not at all: a failure while writing it leaves no partial
folder, and so no opted-in text outside a finished run."""

from __future__ import annotations

import pytest

from conftest import fake_config, fake_variant, make_task
from qeval.report import html as html_report
from qeval.engines.fake import FakeFactory
from qeval.report.terminal import QuietUI
from qeval.gate import GatePolicy
from qeval.run.pipeline import run_compare
from qeval.run.document import results_dict, write_run


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    task = make_task(40)
    cfg = fake_config(fake_variant("base"), fake_variant("c", damage=0.2)).model_copy(
        update={"efficiency": None, "log_text": True})
    res = run_compare(cfg, [task], factory=FakeFactory([task]), store=None, model_fingerprint="f",
                      policy=GatePolicy(), ui=QuietUI())
    results = results_dict(res, model={"spec": "fake", "source": "fake", "fingerprint": "f" * 64}, policy={})

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


def test_timings_say_where_each_variants_time_went(tmp_path):
    from qeval.report.tables import time_breakdown

    task = make_task(40)
    cfg = fake_config(fake_variant("base"), fake_variant("c", damage=0.2))
    res = run_compare(cfg, [task], factory=FakeFactory([task]), store=None, model_fingerprint="f",
                      policy=GatePolicy(), ui=QuietUI())
    stages = res.timings["stages_s"]
    assert set(stages) == {"base", "c"}
    for per_variant in stages.values():
        assert {"prepare", "load", "tokenize", "score", "probe"} <= set(per_variant)
        assert all(x >= 0 for x in per_variant.values())
    line = time_breakdown({**res.timings, "model_preparation_s": 1.5, "total_s": 100.0})
    assert line.startswith("wall time 100.0 s: model 1.5 s · quantize/export ")
    summed = sum(s["score"] for s in stages.values())
    assert f"score {summed:.1f} s" in line and line.endswith(" s")


def test_adding_a_candidate_spends_no_time_on_the_baseline(tmp_path):
    from qeval.run.store import RecordStore

    task = make_task(40)
    store = RecordStore(tmp_path / "records")
    common = dict(factory=FakeFactory([task]), store=store, model_fingerprint="f", policy=GatePolicy(),
                  ui=QuietUI())
    first = fake_config(fake_variant("base"), fake_variant("c1", damage=0.2)).model_copy(update={"efficiency": None})
    run_compare(first, [task], **common)
    second = first.model_copy(update={"candidates": (*first.candidates, fake_variant("c2", damage=0.1))})
    res = run_compare(second, [task], **common)
    # Neither loaded nor scored: the baseline's and c1's records come from the store.
    assert res.timings["stages_s"]["base"] == {} and res.timings["stages_s"]["c1"] == {}
    assert res.baseline.reused_tasks == ["synthetic"]
    assert set(res.timings["stages_s"]["c2"]) == {"prepare", "load", "tokenize", "score"}
