"""Task kinds are a registry: a fourth kind is one module and one registry line.

This module is that module: `YesNoKind` below (a yes/no question scored by the log-likelihood of
" yes" and " no", its own record, comparison and gate rule) lives only in the tests. Registered
with one line, it runs through the compare pipeline (fake backend, record store, journal, reuse)
and the gate to a verdict; nothing in qeval names it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from conftest import fake_config, fake_variant, make_task
from qeval import kinds
from qeval.engines.base import LoglikelihoodRequest
from qeval.engines.fake import FakeFactory
from qeval.errors import QevalInputError
from qeval.gate import GatePolicy, TaskRules
from qeval.verdict import interval_rules, nogo_alpha_for
from qeval.report.terminal import QuietUI
from qeval.run.pipeline import run_compare
from qeval.run.store import RecordStore
from qeval.tasks.registry import load_task
from qeval.types import Decision, RuleResult, Sample, Strict, Task, TaskSpec, TaskVerdict

# ------------------------------------------------------------------ the test-only kind


class YesNoRecord(Strict):
    task: str
    sample_id: str
    variant: str
    prompt_hash: str
    says_yes: bool
    correct: bool


class YesNoComparison(Strict):
    task: str
    candidate: str
    kind: Literal["yes_no"] = "yes_no"
    n: int
    changed: int  # items whose yes/no answer differs from the baseline's


class YesNoKind:
    name = "yes_no"
    record_type = YesNoRecord
    comparison_type = YesNoComparison
    paired_part = "items"
    paired_type = YesNoRecord
    unit = "items"
    source_format = "qeval_items"
    has_labels = False
    relative = False
    generates = False
    rotates = False
    hash_drops: frozenset[str] = frozenset()
    fixed_chunk = 5  # small, so that a run of 40 items journals eight chunks
    bar_suffix = " (yes/no)"
    label_free_metric = "answer_changed"
    calibrate_metrics = ("answer_changed",)
    rank_priority = 3
    rank_per_task = False

    def check_spec(self, path, spec):
        pass

    def check_task(self, task):
        if any(len(s.choices) != 2 for s in task.samples):
            raise QevalInputError(f"task {task.spec.id}: a yes_no item has exactly two choices")

    def context_needed(self, spec):
        return None

    def prepare(self, task, tokenize):
        work = []
        for s in task.samples:
            ctx = tuple(tokenize(f"{s.question} Answer yes or no:"))
            reqs = tuple(LoglikelihoodRequest(ctx, tuple(tokenize(f" {c}")), s.id, i) for i, c in enumerate(s.choices))
            work.append((s, reqs, hashlib.sha256(repr(reqs).encode()).hexdigest()))
        return work

    def identify(self, work):
        return work[0].id, work[2]

    def units(self, work):
        return len(work[1])

    def check_same(self, task, expected: Mapping[str, str], work, variant):
        for s, _, h in work:
            if expected.get(s.id) != h:
                raise QevalInputError(f"task {task.spec.id}, item {s.id}: {variant} tokenises differently")

    def reference(self, task, work, backend, advance):
        return None

    def score_chunk(self, task, chunk, backend, advance, reference):
        lps = backend.loglikelihood([r for _, reqs, _ in chunk for r in reqs], advance)
        out = []
        for n, (s, _, h) in enumerate(chunk):
            yes = lps[2 * n] >= lps[2 * n + 1]
            out.append(YesNoRecord(task=task.spec.id, sample_id=s.id, variant=backend.info.variant,
                                   prompt_hash=h, says_yes=yes, correct=yes == (s.target == 0)))
        return out, None

    def compare(self, task, baseline, candidate, *, n_boot, seed):
        base = {r.sample_id: r.says_yes for r in baseline}
        return YesNoComparison(task=task.spec.id, candidate=candidate[0].variant, n=len(candidate),
                               changed=sum(base[r.sample_id] != r.says_yes for r in candidate))

    def interval_limits(self, rules):
        return (rules.max_top1_disagreement,)

    def judge(self, comparison, rules, **kw):
        share = comparison.changed / comparison.n
        limit = rules.max_top1_disagreement
        decision = Decision.GO if share <= limit / 2 else Decision.NO_GO if share > limit else Decision.INCONCLUSIVE
        return TaskVerdict(task=comparison.task, candidate=comparison.candidate, decision=decision,
                           rules=(RuleResult(rule="answer_changed", decision=decision,
                                             reason=f"{share:.0%} of answers changed (limit {limit:.0%})"),))

    def calibrate_rows(self, task, base_records, runs, metric):
        base = {r.sample_id: r for r in base_records}
        ids = sorted(base)
        return np.array([[float(run_by[i].says_yes != base[i].says_yes) for i in ids]
                         for run_by in ({r.sample_id: r for r in run} for run in runs)]), None, ids


KIND = YesNoKind()


@pytest.fixture
def yes_no(monkeypatch):
    monkeypatch.setitem(kinds.KINDS, "yes_no", __name__)  # the one registry line (undone after the test)


def yes_no_task(n: int = 40) -> Task:
    samples = tuple(Sample(id=f"q{i:03d}", question=f"Is statement {i} true?", choices=("yes", "no"),
                           target=i % 2, category="c") for i in range(n))
    return Task(spec=TaskSpec(id="yn", kind="yes_no", source={"path": "."}), samples=samples,
                content_hash=f"yn-{n}", path="<memory>")


def _run(tasks, *cands, store=None):
    return run_compare(fake_config(fake_variant("base", skill=0.9), *cands, tasks=[t.spec.id for t in tasks]),
                       tasks, factory=FakeFactory(tasks), store=store, model_fingerprint="fake",
                       policy=GatePolicy(), ui=QuietUI())


# ------------------------------------------------------------------ tests


def test_a_fourth_kind_runs_end_to_end_to_a_verdict(yes_no, tmp_path):
    task = yes_no_task()
    cands = (fake_variant("same", skill=0.9), fake_variant("broken", skill=0.9, damage=0.5))
    store = RecordStore(tmp_path)
    res = _run([task], *cands, store=store)
    assert res.verdict.per_candidate == {"same": Decision.GO, "broken": Decision.NO_GO}
    assert all(isinstance(c, YesNoComparison) for c in res.comparisons)
    broken = next(c for c in res.comparisons if c.candidate == "broken")
    assert broken.changed > 0 and broken.n == 40
    assert all(isinstance(r, YesNoRecord) for r in res.baseline.records["yn"])
    assert not res.power  # no labels: no accuracy power rows
    # Its records went to the store under the kind's record type; a second run reuses them.
    again = _run([task], *cands, store=store)
    assert set(again.baseline.reused_tasks) == {"yn"}
    assert again.verdict.per_candidate == res.verdict.per_candidate
    assert [c.changed for c in again.comparisons] == [c.changed for c in res.comparisons]


def test_a_fourth_kind_runs_beside_the_built_in_ones(yes_no):
    tasks = [yes_no_task(), make_task(400)]
    res = _run(tasks, fake_variant("same", skill=0.9))
    assert {(c.task, c.kind) for c in res.comparisons} == {("yn", "yes_no"), ("synthetic", "multiple_choice")}
    assert res.verdict.per_candidate == {"same": Decision.GO}
    # Its rules join the candidate's multiplicity family.
    _, k = nogo_alpha_for(GatePolicy(), [(c.task, c.kind) for c in res.comparisons])
    assert k == interval_rules(TaskRules()) + 1


def test_a_fourth_kind_checks_its_tasks_before_any_model_time(yes_no):
    bad = yes_no_task(4)
    bad = bad.model_copy(update={"samples": (bad.samples[0].model_copy(update={"choices": ("a", "b", "c")}),)})
    with pytest.raises(QevalInputError, match="exactly two choices"):
        _run([bad], fake_variant("same"))


def test_unknown_kind_is_one_line_naming_the_known_kinds():
    with pytest.raises(QevalInputError) as err:
        kinds.kind_of("essay", where="tasks/t/t.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("tasks/t/t.yaml: unknown task kind 'essay'")
    assert "known kinds: multiple_choice, generate, reference_text" in msg


def test_unknown_kind_in_a_task_file_names_the_file(tmp_path):
    (tmp_path / "items").mkdir()
    (tmp_path / "items" / "a.yaml").write_text("area: testing\nitems: []\n")
    path = tmp_path / "t.yaml"
    path.write_text("id: t\nkind: essay\nsource:\n  format: qeval_items\n  path: items\n")
    with pytest.raises(QevalInputError) as err:
        load_task(path)
    assert str(err.value).startswith(f"{path}: unknown task kind 'essay'; known kinds: ")
    assert "\n" not in str(err.value)


def test_unknown_kind_reaching_the_pipeline_is_bad_input():
    task = yes_no_task(4)  # not registered here
    with pytest.raises(QevalInputError, match="unknown task kind 'yes_no'; known kinds: multiple_choice"):
        _run([task], fake_variant("same"))


def test_built_in_kinds_satisfy_the_protocol():
    names = [k.name for k in kinds.all_kinds()]
    assert names == list(kinds.KINDS)
    from qeval.kinds.base import TaskKind

    wanted = {n for n in TaskKind.__annotations__} | {n for n in vars(TaskKind) if not n.startswith("_")}
    for k in kinds.all_kinds():
        assert all(hasattr(k, n) for n in wanted), k.name


def test_rotations_only_where_the_kind_scores_them():
    spec = TaskSpec(id="t", kind="reference_text", source={"path": "."}, rotations="cyclic")
    with pytest.raises(QevalInputError, match="applies to multiple_choice tasks, not reference_text"):
        kinds.check_spec(spec, Path("t.yaml"))
