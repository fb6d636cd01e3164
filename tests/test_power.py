"""The minimum-detectable-drop table: formula, history lookup, flags."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import make_task
from qeval import stats
from qeval.gate import GatePolicy, TaskRules
from qeval.power import discordance_history, power_table


def _write_run(root: Path, name: str, comps: list[dict], mtime: float) -> None:
    d = root / name
    d.mkdir(parents=True)
    p = d / "results.json"
    p.write_text(json.dumps({"comparisons": comps}))
    os.utime(p, (mtime, mtime))


def test_without_history_the_policy_default_is_used_and_small_tasks_are_flagged():
    pol = GatePolicy(assumed_discordance=0.10)
    rows = power_table([make_task(216), make_task(5000, task_id="big")], ["int8"], pol)
    small, big = rows
    assert small.candidate is None and small.discordance_source == "policy default"
    assert small.mde == pytest.approx(stats.mde_paired(216, 0.10))
    assert small.underpowered and small.n_needed == stats.n_for_mde(0.05, 0.10)
    assert not big.underpowered and big.mde < 0.05


def test_history_gives_per_candidate_discordance_newest_run_first(tmp_path: Path):
    c = {"task": "synthetic", "n": 200, "flips_correct_to_wrong": 6, "flips_wrong_to_correct": 4}
    _write_run(tmp_path, "old", [{**c, "candidate": "nf4", "flips_correct_to_wrong": 30}], 1000)
    _write_run(tmp_path, "new", [{**c, "candidate": "nf4"}, {**c, "candidate": "int8", "flips_correct_to_wrong": 1}], 2000)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    hist = discordance_history(tmp_path)
    assert hist[("synthetic", "nf4")] == (pytest.approx(0.05), "new")
    rows = power_table([make_task(200)], ["nf4", "int8", "awq"], GatePolicy(), hist)
    by = {r.candidate: r for r in rows}
    assert by["nf4"].discordance == pytest.approx(0.05)
    assert by["int8"].discordance == pytest.approx(0.025)
    # Never seen: the largest discordance seen for the task, and it says so.
    assert by["awq"].discordance == pytest.approx(0.05) and "largest earlier" in by["awq"].discordance_source


def test_zero_discordance_history_is_floored_at_one_item():
    hist = {("synthetic", "int8"): (0.0, "r")}
    (row,) = power_table([make_task(100)], ["int8"], GatePolicy(), hist)
    assert row.discordance == pytest.approx(0.01) and row.mde > 0


def test_task_without_margin_is_never_flagged():
    pol = GatePolicy(defaults=TaskRules(accuracy_margin=None))
    (row,) = power_table([make_task(40)], ["x"], pol)
    assert row.margin is None and not row.underpowered and row.n_needed is None
