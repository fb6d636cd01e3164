"""generate tasks: prompts become token-id requests, outputs become records of hashes.

The answer is extracted from the output text by the task's `answer_pattern` (the last match's
group 1, or the whole match), and graded: for items with choices, the extracted letter must be the
key's; for free-form items, the extracted text must equal an accepted answer after normalisation;
for numeric items (`answer: numeric`), the first number of the extracted text must lie within the
item's tolerance of its value (no number there: an extraction failure).
Records keep sha256 hashes of the output, its normalised form and the answer, never the text
(numeric items also keep the number read, a dose figure).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qeval import gate
from qeval import pairing as cmp
from qeval.engines.base import Backend, GenerationRequest, Progress
from qeval.errors import QevalInputError
from qeval.kinds.base import ItemKind, accuracy_change, item_rows, labelled_limits
from qeval.kinds.choice import chance_levels, render_prompt
from qeval.item_audit import heuristic_credits
from qeval.util.numeric import first_number, format_number
from qeval.types import (
    GenerationComparison, GenerationRecord, GenerationSpec, NumericAnswer, PairedItems, Sample, Task, TaskSpec,
)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalise(text: str) -> str:
    """Lowercase, punctuation replaced by spaces, whitespace collapsed. Punctuation becomes a
    space rather than vanishing so that "2.5 mg" never equals "25 mg"."""
    lowered = text.lower()
    spaced = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in lowered)
    return " ".join(spaced.split())


def generation_spec(task: Task) -> GenerationSpec:
    if task.spec.generation is None:
        raise QevalInputError(f"{task.path}: a generate task needs a `generation:` block")
    return task.spec.generation


def compiled_pattern(spec: TaskSpec) -> re.Pattern[str] | None:
    """The task's answer pattern, compiled; None when the task has none (the whole output is the
    answer)."""
    pattern = spec.generation.answer_pattern if spec.generation else ""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise QevalInputError(f"task {spec.id}: answer_pattern {pattern!r} is not a valid Python "
                              f"regular expression ({exc}); fix it in the task file") from None


def check_generate_task(t: Task) -> None:
    """Before any model time: a generate task has a usable pattern and gradable items."""
    generation_spec(t)
    compiled_pattern(t.spec)
    ungradable = [s.id for s in t.samples if not s.choices and not s.answers and s.numeric is None]
    if ungradable:
        raise QevalInputError(f"task {t.spec.id}: item {ungradable[0]!r} has neither choices nor "
                              "accepted answers; give it `answers` or choices with a key")


def answer_keys(task: Task) -> dict[str, NumericAnswer]:
    """sample id → the numeric key, for a task's numeric items (compare_generation's tolerances)."""
    return {s.id: s.numeric for s in task.samples if s.numeric is not None}


def extract_answer(text: str, pattern: re.Pattern[str] | None) -> str | None:
    """The last match's group 1 (or the whole match) stripped; without a pattern the whole
    output stripped. None when nothing usable was found."""
    if pattern is None:
        answer = text.strip()
        return answer or None
    last = None
    for last in pattern.finditer(text):
        pass
    if last is None:
        return None
    group = last.group(1) if pattern.groups >= 1 and last.group(1) is not None else last.group(0)
    return group.strip() or None


def letter_index(answer: str | None, letters: str) -> int:
    """Index of a one-letter answer among `letters` (exact case first, then either case); -1 if
    the answer is not one of them."""
    if answer is None or len(answer) != 1:
        return -1
    for candidate in (answer, answer.upper(), answer.lower()):
        if candidate in letters:
            return letters.index(candidate)
    return -1


def grade(spec: TaskSpec, sample: Sample, answer: str | None) -> tuple[int, bool]:
    """(prediction, correct). Items with choices: the extracted letter against the key's.
    Numeric items: the answer's first number within the item's tolerance. Free-form items: exact
    match with an accepted answer after normalisation."""
    if sample.choices:
        prediction = letter_index(answer, spec.prompt.letters[: len(sample.choices)])
        return prediction, prediction == sample.target
    if sample.numeric is not None:
        value = first_number(answer)
        return -1, value is not None and sample.numeric.accepts(value)
    accepted = {normalise(a) for a in sample.answers}
    return -1, answer is not None and normalise(answer) in accepted


@dataclass(frozen=True)
class GenerationItem:
    sample: Sample
    request: GenerationRequest
    prompt_hash: str


def build_generation_items(task: Task, tokenize: Callable[[str], list[int]]) -> list[GenerationItem]:
    gen = generation_spec(task)
    items = []
    for s in task.samples:
        context, _ = render_prompt(task.spec, s)
        ids = tuple(tokenize(context))
        if not ids:
            raise QevalInputError(f"task {task.spec.id}, item {s.id}: the prompt is empty")
        prompt_hash = hashlib.sha256(("gen:" + ",".join(map(str, ids))).encode()).hexdigest()
        items.append(GenerationItem(s, GenerationRequest(ids, gen.max_tokens, tuple(gen.stop), s.id),
                                    prompt_hash))
    return items


def score_generation(task: Task, items: Sequence[GenerationItem], backend: Backend,
                     advance: Progress | None = None) -> tuple[list[GenerationRecord], list[str]]:
    """Records (hashes and numbers) and, in the same order, the output texts, which the caller
    keeps only when the user opted in to text logging."""
    results = backend.generate([it.request for it in items], advance)
    pattern = compiled_pattern(task.spec)
    records = []
    for it, res in zip(items, results, strict=True):
        answer = extract_answer(res.text, pattern)
        value = None
        if it.sample.numeric is not None:  # the answer is its number, spelt one way
            value = first_number(answer)
            answer = None if value is None else format_number(value)
        prediction, correct = grade(task.spec, it.sample, answer)
        records.append(GenerationRecord(
            task=task.spec.id, sample_id=it.sample.id, variant=backend.info.variant,
            prompt_hash=it.prompt_hash, output_hash=sha256_text(res.text),
            normalised_hash=sha256_text(normalise(res.text)),
            answer_hash=None if answer is None else sha256_text(normalise(answer)), answer_value=value,
            prediction=prediction, target=it.sample.target, n_choices=len(it.sample.choices),
            correct=correct, n_output_tokens=res.n_tokens, stop_reason=res.stop_reason,
            category=it.sample.category, risk=it.sample.risk, cluster=it.sample.cluster,
        ))
    return records, [r.text for r in results]


class GenerateKind(ItemKind):
    name = "generate"
    record_type = GenerationRecord
    comparison_type = GenerationComparison
    paired_part = "items"
    paired_type = PairedItems
    unit = "items"
    source_format = "qeval_items"
    has_labels = True
    relative = False
    generates = True
    rotates = False
    hash_drops: frozenset[str] = frozenset()
    fixed_chunk = None
    bar_suffix = " (generating)"
    label_free_metric = "answer_disagreement"
    calibrate_metrics = ("delta_accuracy", "answer_disagreement")
    rank_priority = 2
    rank_per_task = False

    def check_spec(self, path: object, spec: TaskSpec) -> None:
        if spec.generation is None:
            raise QevalInputError(f"{path}: a generate task needs a `generation:` block "
                                  "(max_tokens, stop, answer_pattern)")

    def check_task(self, task: Task) -> None:
        check_generate_task(task)

    def context_needed(self, spec: TaskSpec) -> tuple[int, str] | None:
        if spec.generation is None:
            return None
        return (spec.generation.max_tokens + 1,
                f"generation.max_tokens ({spec.generation.max_tokens}) and a prompt")

    def prepare(self, task: Task, tokenize: Callable[[str], list[int]]) -> list[GenerationItem]:
        return build_generation_items(task, tokenize)

    def units(self, work: GenerationItem) -> int:
        return 1

    def score_chunk(self, task: Task, chunk: Sequence[GenerationItem], backend: Backend,
                    advance: Progress | None, reference: object) -> tuple[list[GenerationRecord], list[str]]:
        return score_generation(task, chunk, backend, advance)

    def compare(self, task: Task, baseline, candidate, *, n_boot: int, seed: int) -> GenerationComparison:
        return cmp.compare_generation(baseline, candidate, chance=chance_levels(task),
                                      clusters=cmp.task_clusters(task), cluster_by=task.spec.cluster_by,
                                      cues=heuristic_credits(task.samples), tolerances=answer_keys(task))

    def interval_limits(self, rules) -> tuple:
        return (*labelled_limits(rules), rules.max_answer_disagreement)

    def judge(self, comparison, rules, **kw):
        return gate.judge_generate(comparison, rules, **kw)

    def calibrate_rows(self, task: Task, base_records, runs, metric: str):
        if metric == "delta_accuracy":
            return item_rows(base_records, runs, accuracy_change)
        # the extracted answer changed
        return item_rows(base_records, runs, lambda b, c: float(c.answer_hash != b.answer_hash))


KIND = GenerateKind()
