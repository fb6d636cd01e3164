"""Numeric answers (clinical_dose_calc): reading the number, the tolerance, the item file's
numeric form and its errors, agreement between baseline and candidate, and the gate on a fake
backend. The engines (transformers, llama.cpp) run it in tests/test_generate.py."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from pydantic import ValidationError

from conftest import fake_config, fake_variant
from qeval.engines.fake import FakeFactory
from qeval.pairing import same_answer_of
from qeval.settings import resource_dir
from qeval.report.terminal import QuietUI
from qeval.errors import QevalInputError
from qeval.gate import GatePolicy
from qeval.kinds.generate import extract_answer, grade
from qeval.util.numeric import first_number, format_number, numbers
from qeval.run.pipeline import run_compare
from qeval.tasks.registry import TaskRegistry
from qeval.types import Decision, GenerationRecord, GenerationSpec, NumericAnswer, Risk, Sample, SourceSpec, Task, TaskSpec

POLICY = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
# The clinical_dose_calc task's pattern: the number after the last "answer is" (a few other
# characters may come between: "about", "**", "=").
PATTERN = re.compile(r"[Aa]nswer is:?[^\d\n.\-\u2212]{0,20}?([-\u2212]?\.?\d[\d.,]*)")


@pytest.mark.parametrize("text,expected", [
    ("70 mg", 70.0), ("1,000 units", 1000.0), ("12,500.5 mL", 12500.5), ("0.5 mg", 0.5), (".5 mg", 0.5),
    ("about 2.4 mL/h", 2.4), ("1.5e2 mg", 1.5),  # no exponents: the mantissa
    ("1,5 mg", 1.0),  # no decimal commas
    ("-3 mmol/L", -3.0), ("\u22122 kg", -2.0), ("5-10 mg", 5.0),  # a range: its first number
    ("x2 tablets then 4", 4.0),  # digits glued to a word are not a number
    ("no number here", None), (None, None),
])
def test_first_number_reads_digits_decimals_and_thousands_commas_only(text, expected):
    assert first_number(text) == expected


def test_numbers_in_order_and_canonical_spelling():
    assert numbers("give 1,250 mL over 8 h, i.e. 156.25 mL/h") == [1250.0, 8.0, 156.25]
    assert format_number(70.0) == "70" and format_number(0.5) == "0.5" and format_number(1e-7) == "1e-07"


def test_tolerance_absolute_and_relative_and_exactly_one():
    absolute = NumericAnswer(value=70, unit="mg", tolerance_abs=0.5)
    assert absolute.accepts(70.5) and absolute.accepts(69.5) and not absolute.accepts(70.51)
    relative = NumericAnswer(value=250, unit="mL/h", tolerance_rel=0.02)
    assert relative.tolerance() == pytest.approx(5.0)
    assert relative.accepts(255) and not relative.accepts(255.1)
    assert NumericAnswer(value=0.3, unit="mg", tolerance_abs=0.0).accepts(0.1 + 0.2)  # float rounding
    assert absolute.accepts(71.0, reference=70.6)  # distance between two answers
    for bad in (dict(), dict(tolerance_abs=1, tolerance_rel=0.1)):
        with pytest.raises(ValidationError, match="exactly one"):
            NumericAnswer(value=1, unit="mg", **bad)
    with pytest.raises(ValidationError):
        NumericAnswer(value="70", unit="mg", tolerance_abs=1)  # a string is not a number


def _spec() -> TaskSpec:
    return TaskSpec(id="d", kind="generate", source=SourceSpec(path="."),
                    generation=GenerationSpec(answer="numeric", answer_pattern=PATTERN.pattern))


def test_the_task_file_uses_this_pattern():
    spec = yaml.safe_load((resource_dir("tasks") / "clinical_dose_calc" / "clinical_dose_calc.yaml").read_text())
    assert spec["generation"]["answer_pattern"] == PATTERN.pattern and spec["generation"]["answer"] == "numeric"


def test_grading_extracts_the_number_after_the_last_answer_cue():
    item = Sample(id="d1", question="q", choices=(), target=-1,
                  numeric=NumericAnswer(value=1000, unit="units", tolerance_rel=0.01))
    spec = _spec()
    for text, ok in [("5 units/kg × 200 kg. The answer is 1,000 units.", True),
                     ("The answer is 995 units", True), ("The answer is 1,011 units", False),
                     ("The answer is 10 units. No wait, the answer is 1000 units.", True),
                     ("The answer is about **1000** units", True), ("The answer is .5 units", False),
                     ("1000 units", False),  # no cue: an extraction failure
                     ("The answer is unclear", False)]:
        assert grade(spec, item, extract_answer(text, PATTERN)) == (-1, ok), text


def _rec(value: float | None, correct: bool, variant: str) -> GenerationRecord:
    return GenerationRecord(
        task="d", sample_id="d1", variant=variant, prompt_hash="p", output_hash="o", normalised_hash="n",
        answer_hash=None if value is None else format_number(value), answer_value=value, prediction=-1,
        target=-1, n_choices=0, correct=correct, n_output_tokens=5, stop_reason="eos", category="x",
        risk=Risk.high)


def test_same_answer_is_both_right_or_within_the_tolerance_of_each_other():
    key = NumericAnswer(value=70, unit="mg", tolerance_abs=0.5)
    assert same_answer_of(_rec(70.4, True, "b"), _rec(69.6, True, "c"), key)  # 0.8 apart, both right
    assert same_answer_of(_rec(80.0, False, "b"), _rec(80.3, False, "c"), key)  # the same wrong dose
    assert not same_answer_of(_rec(80.0, False, "b"), _rec(81.0, False, "c"), key)
    assert not same_answer_of(_rec(70.0, True, "b"), _rec(None, False, "c"), key)
    assert same_answer_of(_rec(None, False, "b"), _rec(None, False, "c"), key)  # both failed


ITEM = {"id": "dc-1", "question": "70 kg at 1 mg/kg: how many mg?", "value": 70, "unit": "mg",
        "tolerance_abs": 0.5, "rationale": "1 × 70", "risk": "high", "source": "Label (2024)",
        "region": "intl", "reviewed": "2026-12-03"}


def _dose_task(root, items, provenance=True):
    (root / "d" / "items").mkdir(parents=True, exist_ok=True)
    lines = ["area: dose", "items:"]
    for it in items:
        lines.append("  - " + json.dumps(it))  # one flow mapping per line: item n starts on line n + 2
    (root / "d" / "items" / "a.yaml").write_text("\n".join(lines) + "\n")
    (root / "d" / "d.yaml").write_text(json.dumps({
        "id": "d", "kind": "generate", "require_provenance": provenance,
        "source": {"format": "qeval_items", "path": "items"}, "prompt": {"template": "{question}"},
        "generation": {"answer": "numeric", "max_tokens": 16, "answer_pattern": PATTERN.pattern}}))
    return TaskRegistry([root])


def test_numeric_items_load_with_their_key_and_provenance(tmp_path):
    task = _dose_task(tmp_path, [ITEM, {**ITEM, "id": "dc-2", "value": 2.5, "tolerance_abs": None,
                                        "tolerance_rel": 0.04}]).load("d")
    a, b = task.samples
    assert a.numeric == NumericAnswer(value=70, unit="mg", tolerance_abs=0.5) and a.choices == ()
    assert b.numeric.tolerance() == pytest.approx(0.1) and b.risk == Risk.high and b.target == -1


@pytest.mark.parametrize("change,message", [
    ({"tolerance_rel": 0.1}, "exactly one of tolerance_abs"),
    ({"tolerance_abs": None}, "exactly one of tolerance_abs"),
    ({"value": "70"}, "value"),
    ({"unit": ""}, "unit"),
    ({"answer": "B"}, "unknown field 'answer'"),
    ({"source": None}, "missing required field 'source'.*require_provenance"),
    ({"source": "  "}, "source: is empty"),
    ({"region": "mars"}, "region"),
    ({"reviewed": "3 Dec 2026"}, "reviewed: must be an ISO date"),
    ({"reviewed": "2026-13-03"}, "reviewed"),
])
def test_bad_numeric_items_name_file_line_item_and_field(tmp_path, change, message):
    reg = _dose_task(tmp_path, [ITEM, {**ITEM, "id": "dc-2", **change}])
    with pytest.raises(QevalInputError, match=rf"a\.yaml line 4: item 'dc-2': .*{message}") as err:
        reg.load("d")
    assert "70 kg" not in str(err.value)  # never the item's text


def test_provenance_is_optional_for_a_task_that_does_not_ask_for_it(tmp_path):
    bare = {k: v for k, v in ITEM.items() if k not in ("source", "region", "reviewed")}
    assert len(_dose_task(tmp_path, [bare], provenance=False).load("d").samples) == 1


def _fake_dose_task(n: int) -> Task:
    samples = tuple(Sample(id=f"d{i:03d}", question=f"Dose {i}?", choices=(), target=-1, risk=Risk.high,
                           numeric=NumericAnswer(value=10.0 + i, unit="mg", tolerance_abs=0.5))
                    for i in range(n))
    return Task(spec=_spec().model_copy(update={"generation": GenerationSpec(
        answer="numeric", answer_pattern=PATTERN.pattern, stop=("\nQuestion:",))}),
        samples=samples, content_hash=f"dose-{n}", path="<memory>")


def test_fake_numeric_task_through_the_gate():
    task = _fake_dose_task(300)
    res = run_compare(fake_config(fake_variant("base", skill=0.8), fake_variant("same", skill=0.8, reword=0.5),
                                  fake_variant("broken", skill=0.8, damage=0.3), tasks=("d",)),
                      [task], factory=FakeFactory([task]), store=None, model_fingerprint="fake",
                      policy=POLICY, ui=QuietUI())
    recs = res.baseline.records["d"]
    assert all(r.answer_value is not None for r in recs)
    assert 0.72 < sum(r.correct for r in recs) / len(recs) < 0.88  # skill 0.8; guesses never hit
    comp = {c.candidate: c for c in res.comparisons}
    assert comp["same"].answer_agreement.estimate == 1.0 and comp["same"].baseline_chance == 0.0
    assert comp["same"].high_risk.n == 300 and comp["same"].cue_heuristic is None
    assert res.verdict.per_candidate == {"same": Decision.GO, "broken": Decision.NO_GO}
    rules = {r.rule: r.decision for t in res.verdict.tasks if t.candidate == "broken" for r in t.rules}
    assert rules["high_risk_non_inferiority"] == Decision.NO_GO and rules["high_risk_flips"] == Decision.NO_GO
