"""The gate on the full runner → compare → gate path with a fake backend of controlled damage."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import fake_config, fake_variant, make_task
from qeval import stats
from qeval.engines.fake import FakeFactory
from qeval.pairing import PromptMismatch, compare_task
from qeval.run.config import RunConfig
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.errors import QevalInputError
from qeval.gate import GatePolicy, TaskRules, judge_task, worst
from qeval.verdict import interval_rules, judge, nogo_alpha_for
from qeval.run.pipeline import run_compare
from qeval.run.store import RecordStore
from qeval.types import Decision, ItemRecord, Risk

POLICY = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")


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
                                           max_choice_kl_p95=None, max_top1_disagreement=None,
                                           accuracy_margin=0.5))
    res = _run(task, fake_variant("base", skill=0.8), fake_variant("c", skill=0.8, damage=0.02), policy=policy)
    c = res.comparisons[0]
    high = {s.id for s in task.samples if s.risk.value == "high"}
    flips = c.high_risk.correct_to_wrong
    assert flips and set(flips) <= high
    assert set(flips) < {sid for sid, b, k in zip(c.items.sample_ids, c.items.baseline_correct,
                                                  c.items.candidate_correct) if b and not k}
    assert c.high_risk.n == len(high)
    rules = {r.rule: r for r in res.verdict.tasks[0].rules}
    assert rules["high_risk_flips"].decision == Decision.NO_GO
    assert all(sid in rules["high_risk_flips"].reason for sid in flips)


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
    with pytest.raises(QevalInputError, match="acuracy_margin"):
        GatePolicy.from_yaml(bad)


def test_per_task_policy_overrides_only_named_fields(tmp_path: Path):
    p = tmp_path / "p.yaml"
    p.write_text("defaults:\n  accuracy_margin: 0.02\n  min_items: 50\ntasks:\n  t1:\n    min_items: 10\n")
    pol = GatePolicy.from_yaml(p)
    assert pol.rules_for("t1").min_items == 10
    assert pol.rules_for("t1").accuracy_margin == 0.02
    assert pol.rules_for("other").min_items == 50


def _records(outcomes, variant, risk=None):
    """ItemRecords whose predictions give these correct/wrong outcomes (4 choices, key 0)."""
    out = []
    for i, ok in enumerate(outcomes):
        scores = (0.0, -1.0, -2.0, -3.0) if ok else (-1.0, 0.0, -2.0, -3.0)
        out.append(ItemRecord(
            task="t", sample_id=f"i{i:04d}", variant=variant, prompt_hash="h" * 64,
            choice_logprobs=scores, choice_scores=scores, prediction=0 if ok else 1, target=0,
            correct=ok, category="all", risk=(risk[i] if risk else Risk.standard),
        ))
    return out


def _pair(n, base_acc, down, up=0, risk=None):
    base = [i < int(base_acc * n) for i in range(n)]
    cand = list(base)
    for i in range(down):
        cand[i] = False
    for i in range(up):
        cand[n - 1 - i] = True
    return _records(base, "base", risk), _records(cand, "cand", risk)


ACCURACY_ONLY = TaskRules(max_choice_kl_mean=None, max_choice_kl_p95=None,
                          max_top1_disagreement=None, require_accuracy_evidence=True)


def test_bonferroni_turns_a_borderline_no_go_into_inconclusive():
    n, margin, k = 400, 0.05, 6
    # The first number of flips whose upper bound falls below -margin at one-sided 0.025, while
    # the Bonferroni-corrected bound (0.025 / k) does not yet: computed, not hard-coded.
    down = next(d for d in range(20, 120)
                if stats.tango_bound(0, d, n, alpha=0.025, side="upper") < -margin)
    assert stats.tango_bound(0, down, n, alpha=0.025 / k, side="upper") >= -margin
    c = compare_task(*_pair(n, 0.8, down))
    plain = judge_task(c, ACCURACY_ONLY, nogo_alpha=0.025)
    corrected = judge_task(c, ACCURACY_ONLY, nogo_alpha=0.025 / k)
    assert plain.decision == Decision.NO_GO
    assert corrected.decision == Decision.INCONCLUSIVE
    assert "straddle" in corrected.rules[0].reason


def test_nogo_family_counts_tasks_times_enabled_rules_and_is_stated():
    pol = GatePolicy()
    alpha, k = nogo_alpha_for(pol, [("a", "multiple_choice"), ("b", "multiple_choice")])
    assert k == 2 * interval_rules(TaskRules()) == 8
    assert alpha == pytest.approx(0.025 / 8)
    assert nogo_alpha_for(pol.model_copy(update={"nogo_correction": "none"}), [("a", "multiple_choice"), ("b", "multiple_choice")])[0] == 0.025
    v = judge([compare_task(*_pair(200, 0.8, 0))], pol)
    assert "all tasks must pass" in v.combination and "Bonferroni" in v.combination


def test_go_requires_lower_bound_above_minus_margin():
    # Δ = 0 on 100 items: the lower bound is about -3.7 pp: GO at margin 5 pp, not at 2 pp.
    c = compare_task(*_pair(100, 0.8, 0))
    assert judge_task(c, ACCURACY_ONLY.model_copy(update={"accuracy_margin": 0.05})).decision == Decision.GO
    tight = judge_task(c, ACCURACY_ONLY.model_copy(update={"accuracy_margin": 0.02}))
    assert tight.decision == Decision.INCONCLUSIVE


def test_high_risk_margin_judges_the_high_risk_subset_alone():
    n = 300
    risk = [Risk.high if i < 60 else Risk.standard for i in range(n)]
    base, cand = _pair(n, 0.9, down=5, risk=risk)  # all 5 flips land on high-risk items
    c = compare_task(base, cand)
    rules = ACCURACY_ONLY.model_copy(update={"accuracy_margin": 0.05, "high_risk_accuracy_margin": 0.05})
    v = {r.rule: r for r in judge_task(c, rules).rules}
    assert v["accuracy_non_inferiority"].decision == Decision.GO  # -1.7 pp over all items
    assert v["high_risk_non_inferiority"].decision != Decision.GO  # -8.3 pp on 60 high-risk items
    assert c.high_risk.baseline_accuracy - c.high_risk.candidate_accuracy == pytest.approx(5 / 60)


def test_kl_p95_catches_a_shifted_tail_that_the_mean_allows():
    task = make_task(400)
    pol = GatePolicy(defaults=TaskRules(max_choice_kl_mean=10.0, max_choice_kl_p95=0.05,
                                        max_top1_disagreement=None, accuracy_margin=None,
                                        require_accuracy_evidence=False))
    res = _run(task, fake_variant("base", skill=0.8), fake_variant("tail", skill=0.8, noise=1.0), policy=pol)
    rules = {r.rule: r.decision for r in res.verdict.tasks[0].rules}
    assert rules["choice_kl_mean"] == Decision.GO
    assert rules["choice_kl_p95"] == Decision.NO_GO


def test_noise_floor_is_measured_and_keeps_numerical_noise_from_a_no_go():
    task = make_task(300)
    strict = GatePolicy(defaults=TaskRules(max_choice_kl_mean=1e-6, max_choice_kl_p95=None,
                                           max_top1_disagreement=None, accuracy_margin=None,
                                           require_accuracy_evidence=False))
    base = fake_variant("base", skill=0.8)
    # A candidate that differs from the baseline exactly as much as a numeric replica does.
    same_as_floor = fake_variant("c", skill=0.8, numeric_path="other", path_noise=0.02)
    plain = run_compare(RunConfig(baseline=base, candidates=(same_as_floor,), tasks=("synthetic",),
                                  n_boot=1000), [task], factory=FakeFactory([task]), store=None,
                        model_fingerprint="fake", policy=strict, ui=QuietUI())
    floored = run_compare(RunConfig(baseline=base, candidates=(same_as_floor,), tasks=("synthetic",),
                                    n_boot=1000, noise_floor="batch1"),
                          [task], factory=FakeFactory([task]), store=None,
                          model_fingerprint="fake", policy=strict, ui=QuietUI())
    assert plain.verdict.decision == Decision.NO_GO
    floor = floored.floors["synthetic"]
    assert floor.candidate == "base@batch1" and floor.choice_kl_mean.estimate > 0
    assert floored.verdict.decision == Decision.INCONCLUSIVE
    assert "noise floor" in floored.verdict.tasks[0].rules[0].reason
    # A real effect, far above the floor, stays NO_GO with the floor measured.
    worse = fake_variant("w", skill=0.8, noise=1.0)
    res = run_compare(RunConfig(baseline=base, candidates=(worse,), tasks=("synthetic",), n_boot=1000,
                                noise_floor="batch1"), [task], factory=FakeFactory([task]),
                      store=None, model_fingerprint="fake", policy=strict, ui=QuietUI())
    assert res.verdict.decision == Decision.NO_GO


def test_clustered_items_widen_the_accuracy_interval():
    n = 240
    base, cand = _pair(n, 0.8, down=24)
    flat = compare_task(base, cand)
    # Flips concentrated in a few clusters of 12 (all flips come from the first 24 items).
    clusters = {r.sample_id: f"case{i // 12}" for i, r in enumerate(base)}
    clustered = compare_task(base, cand, clusters=clusters, cluster_by="cluster")
    assert clustered.design_effect > 2
    assert clustered.n_clusters == 20 and clustered.cluster_by == "cluster"
    assert clustered.delta.estimate == flat.delta.estimate
    assert clustered.delta.low < flat.delta.low
    assert "Rao" in clustered.delta.method


def test_default_high_risk_rules_say_inconclusive_on_a_small_subset_and_skip_a_task_without_one():
    rules = POLICY.defaults
    assert rules.high_risk_accuracy_margin == 0.08 and rules.max_high_risk_flips == 20
    n = 300
    # 20 high-risk items, 10 of them flipped correct→wrong: too few to judge apart, not NO_GO.
    risk = [Risk.high if i < 20 else Risk.standard for i in range(n)]
    v = {r.rule: r for r in judge_task(compare_task(*_pair(n, 0.9, down=10, risk=risk)), rules).rules}
    assert v["high_risk_non_inferiority"].decision == Decision.INCONCLUSIVE
    assert "only 20 risk: high items" in v["high_risk_non_inferiority"].reason
    assert v["high_risk_flips"].decision == Decision.GO  # 10 flips, within the cap of 20
    # No risk: high item at all (a benchmark task): the margin rule is not applied.
    plain = {r.rule for r in judge_task(compare_task(*_pair(n, 0.9, down=0)), rules).rules}
    assert "high_risk_non_inferiority" not in plain
    # Many high-risk items lost: the cap and the margin both say NO_GO.
    risk = [Risk.high if i < 200 else Risk.standard for i in range(n)]
    v = {r.rule: r.decision for r in judge_task(compare_task(*_pair(n, 0.9, down=40, risk=risk)), rules).rules}
    assert v["high_risk_flips"] == v["high_risk_non_inferiority"] == Decision.NO_GO
