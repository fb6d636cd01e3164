"""The minimum-detectable-drop table: formula, history lookup, flags."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import make_task
from qeval import stats
from qeval.settings import resource_dir
from qeval.gate import GatePolicy, TaskRules
from qeval.power import discordance_history, power_table
from qeval.types import Risk


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


def test_declared_clusters_shrink_the_effective_items_and_singletons_count_one_each():
    task = make_task(400)
    spec = task.spec.model_copy(update={"cluster_by": "cluster"})
    # 20 pairs of items share a cluster; the other 360 items have none (each its own cluster).
    samples = tuple(s.model_copy(update={"cluster": f"pair{i // 2}"}) if i < 40 else s
                    for i, s in enumerate(task.samples))
    clustered = task.model_copy(update={"spec": spec, "samples": samples})
    (flat,) = power_table([task], ["x"], GatePolicy())
    (row,) = power_table([clustered], ["x"], GatePolicy())
    n_eff = 400 ** 2 / (360 + 20 * 4)
    assert flat.n_effective is None and row.n_effective == pytest.approx(n_eff)
    assert row.mde == pytest.approx(stats.mde_paired(400, 0.10) * (400 / n_eff) ** 0.5)
    assert row.n_needed == math.ceil(stats.n_for_mde(0.05, 0.10) * 400 / n_eff)
    by_category = clustered.model_copy(update={"spec": task.spec.model_copy(update={"cluster_by": "category"})})
    assert power_table([by_category], ["x"], GatePolicy())[0].n_effective is None


def test_high_risk_rows_follow_the_policy_and_the_default_gate_powers_a_420_item_bank():
    policy = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
    margin = policy.defaults.high_risk_accuracy_margin
    assert margin is not None and policy.defaults.max_high_risk_flips is not None
    # 420 items, half of them high risk (make_task marks every high_every-th item).
    rows = power_table([make_task(420, high_every=2)], ["x"], policy)
    assert [r.subset for r in rows] == ["all", "high_risk"]
    overall, high = rows
    assert high.n == 210 and high.margin == margin and not high.underpowered
    assert not overall.underpowered and overall.mde < 0.05
    # ~30% high risk still powers the high-risk margin; a handful of high-risk items does not.
    assert not power_table([make_task(420, high_every=3)], ["x"], policy)[1].underpowered
    assert power_table([make_task(420, high_every=20)], ["x"], policy)[1].underpowered
    standard = make_task(50)
    standard = standard.model_copy(update={"samples": tuple(s.model_copy(update={"risk": Risk.standard})
                                                            for s in standard.samples)})
    assert [r.subset for r in power_table([standard], ["x"], policy)] == ["all"]  # no high-risk items
