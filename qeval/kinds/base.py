"""The task-kind protocol, and the parts the item-level kinds share.

The pipeline (qeval/run/pipeline.py) drives every kind the same way: `prepare` each task's work
(token ids) per variant, `check_same` a candidate's token ids against the baseline's, score the
work in fixed chunks with `score_chunk` (journaled, resumable), `compare` the baseline's and a
candidate's records, and the gate calls `judge`. A `relative` kind (reference_text) scores a
candidate against the baseline's `reference` (bounded next-token distributions, in memory) and
keeps no baseline records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from qeval.engines.base import Backend, Progress
from qeval.errors import QevalInputError
from qeval.types import Task, TaskSpec


class TaskKind(Protocol):
    name: str  # the `kind:` of a task file and results.json's `kind`
    record_type: type  # one scored unit of one variant (ItemRecord, GenerationRecord, TextRecord)
    comparison_type: type  # one task × candidate comparison (results.json's comparisons)
    paired_part: str  # the comparison's field the gate recomputes bounds from (paired.json)
    paired_type: type  # that field's model
    unit: str  # what a task counts: "items" or "passages"
    source_format: str  # the qeval-native source format its task files read
    has_labels: bool  # items have keys: accuracy rules, the chance guard and the power table apply
    relative: bool  # a candidate is scored against the baseline's `reference`, not paired after
    generates: bool  # the model writes text (kept only when the user opts in to text logging)
    rotates: bool  # `rotations: cyclic` applies
    hash_drops: frozenset[str]  # spec fields never part of this kind's content hash
    fixed_chunk: int | None  # units per journal chunk; None: scale with the batch size
    bar_suffix: str  # after "variant · task" on the progress bar
    label_free_metric: str  # calibrate: its label-free metric
    calibrate_metrics: tuple[str, ...]  # calibrate: every metric, per (arm, task)
    rank_priority: int  # calibrate ranks sets by the kind present with the lowest number
    rank_per_task: bool  # ... by its first task (True) or the mean over its tasks (False)

    def check_spec(self, path: object, spec: TaskSpec) -> None:
        """Kind-specific checks of a task file's spec (bad input: QevalInputError)."""
        ...

    def check_task(self, task: Task) -> None:
        """Before any model time: the loaded task can be scored."""
        ...

    def context_needed(self, spec: TaskSpec) -> tuple[int, str] | None:
        """The context length one sequence of this task needs, and what needs it (None: any)."""
        ...

    def prepare(self, task: Task, tokenize: Callable[[str], list[int]]) -> list:
        """The task's work units (token ids), identical for every variant."""
        ...

    def identify(self, work: Any) -> tuple[str, str]:
        """(unit id, token-id hash) of one work unit."""
        ...

    def units(self, work: Any) -> int:
        """Progress-bar steps of one work unit."""
        ...

    def check_same(self, task: Task, expected: Mapping[str, str], work: Sequence, variant: str) -> None:
        """Refuse a candidate whose token-id hashes differ from the baseline's (`expected`)."""
        ...

    def reference(self, task: Task, work: Sequence, backend: Backend, advance: Progress | None) -> Any:
        """Relative kinds: what the baseline keeps for candidates to score against."""
        ...

    def score_chunk(self, task: Task, chunk: Sequence, backend: Backend, advance: Progress | None,
                    reference: Any) -> tuple[list, list[str] | None]:
        """Records of a chunk of work and, for kinds that generate, the output texts."""
        ...

    def compare(self, task: Task, baseline: Sequence | None, candidate: Sequence, *, n_boot: int,
                seed: int) -> Any:
        """The comparison (baseline: None for relative kinds, whose records already pair)."""
        ...

    def interval_limits(self, rules: Any) -> tuple:
        """The policy limits that can say NO_GO from an interval on this kind (None: rule off)."""
        ...

    def judge(self, comparison: Any, rules: Any, **kw: Any) -> Any:
        """The comparison's TaskVerdict under `rules`."""
        ...

    def calibrate_rows(self, task: Task, base_records: Sequence | None, runs: Sequence[Sequence], metric: str
                       ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
        """(seeds × units) numerators, per-unit denominators (None: per unit) and unit ids."""
        ...


def check_same_prompts(task: Task, expected: Mapping[str, str], items: Sequence, variant: str) -> None:
    """Refuse to score a candidate whose token ids differ from the baseline's."""
    for it in items:
        if expected.get(it.sample.id) != it.prompt_hash:
            raise QevalInputError(
                f"task {task.spec.id}, item {it.sample.id}: {variant} tokenises the prompt "
                "differently from the baseline; the comparison needs byte-identical token ids "
                "(same tokenizer and template)"
            )


class ItemKind:
    """What the two item-level kinds (choice, generate) share: a unit of work is one item with a
    `sample` and a `prompt_hash`, checked against the baseline's, and no baseline reference."""

    def identify(self, work: Any) -> tuple[str, str]:
        return work.sample.id, work.prompt_hash

    def check_same(self, task: Task, expected: Mapping[str, str], work: Sequence, variant: str) -> None:
        check_same_prompts(task, expected, work, variant)

    def reference(self, task, work, backend, advance):
        return None


def item_rows(base_records: Sequence, runs: Sequence[Sequence], per_item: Callable[[Any, Any], float]
              ) -> tuple[np.ndarray, None, list[str]]:
    """Calibrate's (seeds × items) matrix of `per_item(baseline record, candidate record)`."""
    base = {r.sample_id: r for r in base_records}
    ids = sorted(base)
    rows = []
    for run in runs:
        by = {r.sample_id: r for r in run}
        rows.append([per_item(base[i], by[i]) for i in ids])
    return np.array(rows), None, ids


def accuracy_change(b: Any, c: Any) -> float:
    return float(c.correct) - float(b.correct)


def labelled_limits(rules: Any) -> tuple:
    """The accuracy limits of every labelled kind."""
    return rules.accuracy_margin, rules.high_risk_accuracy_margin
