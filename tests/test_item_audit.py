"""The answer-cue audit: the built-in multiple-choice banks meet its limits; each check fails on
synthetic items built to break it; the gate's chance guard uses the best heuristic; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import fake_config, fake_variant
from qeval.engines.fake import FakeFactory
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.gate import GatePolicy, TaskRules
from qeval.item_audit import audit_lines, audit_samples, best_cue, heuristic_credits, warning_line
from qeval.run.pipeline import run_compare
from qeval.tasks.registry import MissingData, TaskRegistry
from qeval.types import Decision, Sample, SourceSpec, Task, TaskSpec

# Distractors of equal length, no cue words: a bank that passes when keys are spread evenly.
PLAIN = ("Drug alpha, dose one", "Drug bravo, dose two", "Drug charl, dose tri", "Drug delta, dose for",
         "Drug echoo, dose fiv")


def _item(i: int, choices, target: int) -> Sample:
    return Sample(id=f"s{i:03d}", question=f"Question {i}?", choices=tuple(choices), target=target)


def _balanced(n: int = 80, k: int = 4) -> list[Sample]:
    return [_item(i, PLAIN[:k], i % k) for i in range(n)]


def _failed(samples) -> set[str]:
    return {c.name for c in audit_samples("t", samples).failed()}


# ---------------------------------------------------------------- the built-in banks


def test_every_builtin_multiple_choice_bank_meets_the_cue_limits():
    """Each item source of the built-in tasks once (clinical_core and its cloze and CoT forms
    share one); benchmark tasks read published files, not this project's items."""
    reg = TaskRegistry([resource_dir("tasks")])
    audited: set[Path] = set()
    for tid in reg.ids():
        try:
            task = reg.load(tid)
        except MissingData:
            continue
        source = (Path(task.path).parent / task.spec.source.path).resolve()
        if task.spec.source.format != "qeval_items" or source in audited:
            continue
        if not any(len(s.choices) >= 2 for s in task.samples):
            continue  # numeric or free-form answers: no options to give anything away
        audited.add(source)
        audit = audit_samples(tid, task.samples)
        assert audit.passed, "\n".join([f"{tid} ({source}):"] + audit_lines(audit))
    assert audited


# ---------------------------------------------------------------- each check can fail


def test_a_balanced_bank_passes_every_check():
    audit = audit_samples("t", _balanced(80, 4) + [_item(100 + i, PLAIN, i % 5) for i in range(40)])
    assert audit.passed, audit_lines(audit)
    assert audit.chance == pytest.approx((80 / 4 + 40 / 5) / 120)
    assert audit.key_letters == {4: {"A": 20, "B": 20, "C": 20, "D": 20}, 5: {x: 8 for x in "ABCDE"}}


def test_key_always_the_longest_option_fails_the_longest_checks():
    items = [_item(i, [c + (" and a longer tail" if j == i % 4 else "") for j, c in enumerate(PLAIN[:4])], i % 4)
             for i in range(40)]
    audit = audit_samples("t", items)
    assert {"heuristic: longest option", "key is the longest option"} <= {c.name for c in audit.failed()}
    assert audit.key_longest == 40 and audit.key_longest_ratio == pytest.approx(38 / 20)
    longest = next(h for h in audit.heuristics if h.name == "longest option")
    assert longest.accuracy.estimate == 1.0 and longest.accuracy.low > 0.9  # Clopper–Pearson


def test_ties_share_the_guess_and_count_in_the_random_placement_share():
    # key tied for longest with one distractor: the heuristic scores 1/2, random placement 2/4
    items = [_item(i, ["Same long option A", "Same long option B", "short c", "short d"], i % 2) for i in range(40)]
    audit = audit_samples("t", items)
    assert next(h for h in audit.heuristics if h.name == "longest option").accuracy.estimate == 0.5
    assert audit.key_longest == 40 and audit.key_longest_expected == pytest.approx(0.5)


def test_dropping_absolute_words_then_longest_is_its_own_heuristic():
    # The longest option carries "always" and is never the key; the key is the longest of the rest.
    items = [_item(i, ["Always give the drug at full dose", "Give the drug at half dose", "Stop it", "Hold it"], 1)
             for i in range(40)]
    audit = audit_samples("t", items)
    names = {c.name for c in audit.failed()}
    assert "heuristic: no absolutes, then longest" in names and "heuristic: longest option" not in names


def test_key_always_last_fails_the_last_option_heuristic_and_the_letter_balance():
    names = _failed([_item(i, PLAIN, 4) for i in range(40)])
    assert {"heuristic: last option", "key letters (5 options)"} <= names


def test_e_over_represented_among_five_option_items_fails_letters():
    # 40% E, the rest spread: the last-option heuristic also sees it across the bank.
    items = [_item(i, PLAIN, 4 if i % 5 in (0, 1) else i % 5 - 2) for i in range(60)]
    audit = audit_samples("t", items)
    assert audit.key_letters[5]["E"] == 24
    assert "key letters (5 options)" in {c.name for c in audit.failed()}


def test_cue_words_only_in_the_key_fail():
    for word, check in (("monitor", "qualifier words only in the key"), ("immediately", "urgency words only in the key")):
        items = [_item(i, [c + (f" {word}" if j == i % 4 else " plus x") for j, c in enumerate(PLAIN[:4])], i % 4)
                 for i in range(40)]
        audit = audit_samples("t", items)
        assert check in {c.name for c in audit.failed()}, word
        cue = audit.qualifiers if check.startswith("qualifier") else audit.urgency
        assert cue.only_in_key == 40 and cue.expected_only_in_key == pytest.approx(10)


def test_numeric_options_out_of_order_and_key_at_an_extreme_fail():
    values = ["5 mg", "10 mg", "20 mg", "40 mg"]
    unsorted = [_item(100 + i, [values[1], values[0], values[2], values[3]], i % 4) for i in range(8)]
    audit = audit_samples("t", _balanced(72) + unsorted)
    assert "numeric options ascending" in {c.name for c in audit.failed()}
    assert audit.numeric.items == 8 and len(audit.numeric.not_ascending) == 8
    # Sorted, but the key is always the largest value (letters rotate over the other items).
    extreme = [_item(100 + i, values, 3) for i in range(30)]
    audit = audit_samples("t", _balanced(90) + extreme)
    assert "key at a numeric extreme" in {c.name for c in audit.failed()}
    assert audit.numeric.key_extreme == 30 and audit.numeric.expected_key_extreme == pytest.approx(15)
    # The key as the one value out of order (a dose written where it does not belong).
    single = [_item(100 + i, ["5 mg", "80 mg", "10 mg", "20 mg"], 1) for i in range(4)]
    assert audit_samples("t", _balanced(76) + single).numeric.key_out_of_order == 4


def test_a_value_frame_counts_as_numeric_and_other_options_do_not():
    framed = _item(0, ["Adrenaline 0.5 mg IM", "Adrenaline 1 mg IM", "Adrenaline 0.1 mg IM", "Adrenaline 5 mg IM"], 0)
    drugs = _item(1, ["Buccal midazolam 10 mg", "Oral diazepam 10 mg", "IV lorazepam 4 mg", "Phenytoin 20 mg/kg"], 0)
    audit = audit_samples("t", [framed, drugs])
    assert audit.numeric.items == 1 and audit.numeric.not_ascending == ("s000",)


# ---------------------------------------------------------------- warnings and the CLI


def test_warning_line_names_numbers_never_text_and_stays_quiet_when_clean_or_small():
    items = [_item(i, [c + (" with a secret tail ZQX" if j == 0 else "") for j, c in enumerate(PLAIN[:4])], 0)
             for i in range(40)]
    line = warning_line(audit_samples("cuey", items))
    assert line and "cuey" in line and "longest option" in line and "\n" not in line
    assert "ZQX" not in line and "Drug" not in line
    assert warning_line(audit_samples("ok", _balanced(80))) is None
    assert warning_line(audit_samples("tiny", items[:10])) is None  # 10 items say little


def _user_task(root: Path, samples) -> Path:
    (root / "cuey" / "items").mkdir(parents=True)
    items = [{"id": s.id, "question": s.question, "choices": list(s.choices), "answer": "ABCDE"[s.target],
              "rationale": "r", "risk": "standard"} for s in samples]
    (root / "cuey" / "items" / "a.yaml").write_text(json.dumps({"area": "x", "items": items}))
    (root / "cuey" / "cuey.yaml").write_text(json.dumps(
        {"id": "cuey", "kind": "multiple_choice", "source": {"format": "qeval_items", "path": "items"}}))
    return root


def test_audit_items_command_and_the_compare_warning(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import qeval.settings
    from qeval.cli import app

    items = [_item(i, [c + (" and a longer tail" if j == i % 4 else "") for j, c in enumerate(PLAIN[:4])], i % 4)
             for i in range(40)]
    tasks = _user_task(tmp_path / "tasks", items)
    real = qeval.settings.resource_dir
    monkeypatch.setattr(qeval.settings, "resource_dir", lambda name: tasks if name == "tasks" else real(name))
    runner = CliRunner()
    res = runner.invoke(app, ["audit-items", "cuey"])
    assert res.exit_code == 1 and "FAIL  'longest option' scores 100.0%" in res.output
    as_json = runner.invoke(app, ["audit-items", "cuey", "--json"]).output
    data = json.loads(as_json)
    assert data["key_longest"] == 40 and data["heuristics"][0]["name"] == "longest option"
    assert not any(t in res.output + as_json for t in ("longer tail", "Drug", "Question"))  # ids and numbers only
    res = runner.invoke(app, ["audit-items", "nope"])
    assert res.exit_code == 2 and "unknown task 'nope'" in res.output
    # compare: the warning comes right after the tasks load, before any model work (here the
    # model does not exist, so the run stops there with its one error line).
    res = runner.invoke(app, ["compare", "--tasks", "cuey", "--model", str(tmp_path / "no-model"),
                              "--base", "fp32", "--candidates", "bf16", "--out", str(tmp_path / "run")])
    lines = [x for x in res.output.splitlines() if x.startswith("qeval:")]
    assert lines[0].startswith("qeval: warning: task cuey: its options give the answer away")
    assert "'longest option' scores 100.0%" in lines[0] and lines[1].startswith("qeval: error:")
    assert res.exit_code == 2 and "and a longer tail" not in res.output


# ---------------------------------------------------------------- the gate's chance guard


def _cued_task(n: int = 400, cued_share: float = 0.6) -> Task:
    """The key is the longest option on the first `cued_share` of items; elsewhere all options
    are the same length and the key is not last (so only 'longest option' reads the cue)."""
    samples = []
    for i in range(n):
        key = i % 3
        tail = [" plus a longer tail" if (j == key and i < cued_share * n) else "" for j in range(4)]
        samples.append(_item(i, [PLAIN[j] + tail[j] for j in range(4)], key))
    return Task(spec=TaskSpec(id="cued", source=SourceSpec(path=".")), samples=tuple(samples),
                content_hash=f"cued-{n}-{cued_share}", path="<memory>")


def test_best_cue_over_the_paired_items():
    credits = heuristic_credits(_cued_task(100, 0.5).samples)
    assert best_cue(credits, [f"s{i:03d}" for i in range(100)]) == ("longest option", pytest.approx(0.5 + 0.5 * 0.25))
    assert best_cue(credits, ["s000", "no-such-item"]) is None


def test_chance_guard_needs_the_baseline_above_the_best_cue_heuristic():
    task = _cued_task()
    policy = GatePolicy(defaults=TaskRules(max_choice_kl_mean=None, max_choice_kl_p95=None,
                                           max_top1_disagreement=None))
    run = lambda skill: run_compare(  # noqa: E731
        fake_config(fake_variant("base", skill=skill), fake_variant("same", skill=skill), tasks=("cued",)),
        [task], factory=FakeFactory([task]), store=None, model_fingerprint="fake", policy=policy, ui=QuietUI())
    middling = run(0.5)  # ≈62% correct: far above chance (25%), not above the cue (70%)
    c = middling.comparisons[0]
    assert c.cue_heuristic == "longest option" and c.cue_accuracy == pytest.approx(0.6 + 0.4 * 0.25)
    assert c.baseline_above_chance_p < 1e-6 and c.baseline_above_cue_p > 0.05
    acc = {r.rule: r for r in middling.verdict.tasks[0].rules}["accuracy_non_inferiority"]
    assert acc.decision == Decision.INCONCLUSIVE
    assert "not significantly above the best answer-cue heuristic" in acc.reason
    assert "chance 25.0%" in acc.reason and "'longest option'" in acc.reason and "70.0%" in acc.reason
    strong = run(0.95)
    assert strong.comparisons[0].baseline_above_cue_p < 1e-6
    assert strong.verdict.decision == Decision.GO
    from qeval.report.markdown import markdown_report
    from qeval.run.document import results_dict

    results = results_dict(middling, model={"spec": "fake", "source": "fake", "fingerprint": "0" * 64}, policy={})
    assert results["comparisons"][0]["cue_accuracy"] == pytest.approx(0.7)
    assert "best cue heuristic 'longest option' 70.0%" in markdown_report(results)


def test_key_never_at_a_numeric_extreme_is_reported_as_a_middle_value_cue():
    values = ["5 mg", "10 mg", "20 mg", "40 mg"]
    audit = audit_samples("t", _balanced(90) + [_item(100 + i, values, 1 + i % 2) for i in range(30)])
    assert audit.numeric.key_extreme == 0 and audit.numeric.p_extreme_fewer < 1e-6
    assert audit.numeric.p_extreme == 1.0
    assert "p = " in next(x for x in audit_lines(audit) if x.startswith("numeric-option items"))


def test_reverse_cues_are_limited_like_the_other_heuristics():
    # keys never the longest and never a numeric extreme: the reverse heuristics see it
    values = ["5 mg", "10 mg", "20 mg", "40 mg"]
    items = ([_item(i, [c + (" and a longer tail" if j == 3 else "") for j, c in enumerate(PLAIN[:4])], i % 3)
              for i in range(60)] + [_item(100 + i, values, 1 + i % 2) for i in range(30)])
    audit = audit_samples("t", items)
    reverse = {h.name: h.accuracy.estimate for h in audit.reverse_heuristics}
    # ("5 mg" is the one shorter value: "not the longest" takes it, and it is never the key)
    assert reverse["not the longest option"] == pytest.approx((60 / 3 + 0) / 90)
    assert reverse["a middle value, else not the longest"] == pytest.approx((60 / 3 + 30 / 2) / 90)
    assert all(h.limit == pytest.approx(audit.chance + 0.03) for h in audit.reverse_heuristics)
    assert {"heuristic: a middle value, else not the longest"} <= {c.name for c in audit.failed()}
    assert not any("(reported)" in x for x in audit_lines(audit))


def test_key_never_the_longest_text_option_fails_not_the_longest():
    # text items only: the key is never the longest (a longer distractor at a rotating letter)
    items = [_item(i, [c + (" and a longer tail" if j == (i + 1) % 4 else "") for j, c in enumerate(PLAIN[:4])],
                   i % 4) for i in range(80)]
    audit = audit_samples("t", items)
    failed = {c.name for c in audit.failed()}
    assert audit.key_longest == 0 and audit.numeric.items == 0
    assert {"heuristic: not the longest option", "heuristic: a middle value, else not the longest"} <= failed
    assert "key letters (4 options)" not in failed and "heuristic: last option" not in failed


def test_key_never_at_a_numeric_extreme_fails_the_middle_value_heuristic_alone():
    # text items balanced (key the longest in 1/4 of them); numeric keys always a middle value
    values = ["5 mg", "10 mg", "20 mg", "40 mg"]
    text = [_item(i, [c + (" and a longer tail" if j == i % 4 else "") for j, c in enumerate(PLAIN[:4])],
                  (i + i // 4) % 4) for i in range(80)]
    numeric = [_item(100 + i, values, 1 + i % 2) for i in range(40)]
    audit = audit_samples("t", text + numeric)
    failed = {c.name for c in audit.failed()}
    assert "heuristic: a middle value, else not the longest" in failed
    assert "heuristic: not the longest option" not in failed
    # the same numeric items with the key at an extreme in half of them pass
    spread = [_item(100 + i, values, (0, 1, 2, 3)[i % 4]) for i in range(40)]
    assert "heuristic: a middle value, else not the longest" not in _failed(text + spread)
