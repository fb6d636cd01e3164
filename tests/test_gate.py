"""The gate on the full runner → compare → gate path with a fake backend of controlled damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import fake_config, fake_variant, make_task
from qeval.backends.fake import FakeFactory
from qeval.compare import PromptMismatch, compare_task
from qeval.config import project_dir
from qeval.console import QuietUI
from qeval.gate import GatePolicy, TaskRules, worst
from qeval.pipeline import run_compare
from qeval.runner import RecordStore
from qeval.types import Decision

POLICY = GatePolicy.from_yaml(project_dir("configs") / "gates" / "default.yaml")


def _run(task, base, *cands, policy=POLICY, store=None):
    cfg = fake_config(base, *cands)
    return run_compare(cfg, [task], factory=FakeFactory([task]), store=store,
                       model_fingerprint="fake", policy=policy, ui=QuietUI())


def test_undamaged_candidate_is_go():
    res = _run(make_task(400), fake_variant("base", skill=0.8), fake_variant("same", skill=0.8))
    c = res.comparisons[0]
    assert c.flips_correct_to_wrong == c.flips_wrong_to_correct == 0
    assert c.choice_kl_mean.estimate == pytest.approx(0.0, abs=1e-12)
    assert res.verdict.decision == Decision.GO
    assert res.verdict.per_candidate == {"same": Decision.GO}


def test_damaged_candidate_is_no_go_with_reasons():
    res = _run(make_task(400), fake_variant("base", skill=0.8), fake_variant("broken", skill=0.8, damage=0.3))
    c = res.comparisons[0]
    assert c.delta.high < -0.05
    assert c.flips_correct_to_wrong > 50 and c.flips_wrong_to_correct == 0
    assert c.mcnemar_p < 1e-6
    assert res.verdict.decision == Decision.NO_GO
    rules = {r.rule: r.decision for r in res.verdict.tasks[0].rules}
    assert rules["accuracy_non_inferiority"] == Decision.NO_GO
    assert any("broken" in r and "NO_GO" in r for r in res.verdict.reasons)


def test_small_damage_on_few_items_is_inconclusive_not_go():
    res = _run(make_task(60), fake_variant("base", skill=0.8), fake_variant("slight", skill=0.8, damage=0.08))
    assert res.verdict.decision == Decision.INCONCLUSIVE


def test_chance_level_baseline_blocks_accuracy_but_label_free_still_speaks():
    task = make_task(300)
    res = _run(task, fake_variant("base", skill=0.0), fake_variant("same", skill=0.0),
               fake_variant("shifty", skill=0.0, noise=2.0))
    by_cand = {t.candidate: t for t in res.verdict.tasks}
    acc = {r.rule: r for r in by_cand["same"].rules}["accuracy_non_inferiority"]
    assert acc.decision == Decision.INCONCLUSIVE and "chance" in acc.reason
    assert by_cand["same"].decision == Decision.INCONCLUSIVE  # never a silent GO at chance
    assert by_cand["shifty"].decision == Decision.NO_GO  # answers shift: KL / agreement catch it
    assert res.verdict.decision == Decision.NO_GO


def test_too_few_items_is_inconclusive():
    res = _run(make_task(12), fake_variant("base", skill=0.9), fake_variant("same", skill=0.9))
    rules = {r.rule: r.decision for r in res.verdict.tasks[0].rules}
    assert rules["min_items"] == Decision.INCONCLUSIVE
    assert res.verdict.decision == Decision.INCONCLUSIVE


def test_high_risk_flips_listed_by_id_and_capped():
    task = make_task(400)
    policy = GatePolicy(defaults=TaskRules(max_high_risk_flips=0, max_choice_kl_mean=None,
                                           min_top1_agreement=None, accuracy_margin=0.5))
    res = _run(task, fake_variant("base", skill=0.8), fake_variant("c", skill=0.8, damage=0.02), policy=policy)
    c = res.comparisons[0]
    high = {s.id for s in task.samples if s.risk.value == "high"}
    assert c.high_risk_flips and set(c.high_risk_flips) <= high
    rules = {r.rule: r for r in res.verdict.tasks[0].rules}
    assert rules["high_risk_flips"].decision == Decision.NO_GO
    assert c.high_risk_flips[0] in rules["high_risk_flips"].reason


def test_worst_candidate_decides_the_run():
    res = _run(make_task(400), fake_variant("base", skill=0.8), fake_variant("same", skill=0.8),
               fake_variant("broken", skill=0.8, damage=0.4))
    assert res.verdict.per_candidate == {"broken": Decision.NO_GO, "same": Decision.GO}
    assert res.verdict.decision == Decision.NO_GO
    assert worst([]) == Decision.INCONCLUSIVE


def test_prompt_mismatch_refuses_to_compare():
    res = _run(make_task(40), fake_variant("base"), fake_variant("same"))
    base = res.baseline.records["synthetic"]
    cand = [r.model_copy(update={"prompt_hash": "0" * 64}) if i == 3 else r
            for i, r in enumerate(res.candidates[0].records["synthetic"])]
    with pytest.raises(PromptMismatch, match=base[3].sample_id):
        compare_task(base, cand)


def test_stored_baseline_records_are_reused(tmp_path: Path):
    task = make_task(50)
    store = RecordStore(tmp_path / "records")
    first = _run(task, fake_variant("base", skill=0.7), fake_variant("a", skill=0.7), store=store)
    second = _run(task, fake_variant("base", skill=0.7), fake_variant("b", skill=0.7, damage=0.1), store=store)
    assert first.baseline.reused_tasks == []
    assert second.baseline.reused_tasks == ["synthetic"]
    assert second.candidates[0].reused_tasks == []
    assert second.baseline.records == first.baseline.records


def test_policy_yaml_rejects_typos(tmp_path: Path):
    bad = tmp_path / "p.yaml"
    bad.write_text("defaults:\n  acuracy_margin: 0.05\n")
    with pytest.raises(Exception, match="acuracy_margin"):
        GatePolicy.from_yaml(bad)


def test_per_task_policy_overrides_only_named_fields(tmp_path: Path):
    p = tmp_path / "p.yaml"
    p.write_text("defaults:\n  accuracy_margin: 0.02\n  min_items: 50\ntasks:\n  t1:\n    min_items: 10\n")
    pol = GatePolicy.from_yaml(p)
    assert pol.rules_for("t1").min_items == 10
    assert pol.rules_for("t1").accuracy_margin == 0.02
    assert pol.rules_for("other").min_items == 50
