"""multiple_choice tasks: each choice's continuation scored by its log-likelihood.

Render each prompt once, tokenise it, score every choice with each variant; the record holds the
choices' scores and the pick (hashes and numbers only). With `rotations: cyclic` every item is
scored under each cyclic rotation of its options and the scores are averaged in its own order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qeval import gate
from qeval import pairing as cmp
from qeval.engines.base import Backend, LoglikelihoodRequest, Progress
from qeval.errors import QevalInputError
from qeval.kinds.base import ItemKind, accuracy_change, item_rows, labelled_limits
from qeval.stats import choice_kl
from qeval.item_audit import heuristic_credits
from qeval.types import ItemRecord, PairedItems, Sample, Task, TaskComparison, TaskSpec

def render_prompt(spec: TaskSpec, sample: Sample) -> tuple[str, list[str]]:
    """The context text and each choice's continuation text. Identical for every variant."""
    if sample.prompt_text is not None:  # rendered by the task's own code (lm-eval bridge)
        return sample.prompt_text, list(sample.continuations or ())
    letters = spec.prompt.letters
    if len(sample.choices) > len(letters):
        raise QevalInputError(f"item {sample.id}: more choices than letters in the prompt spec")
    block = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(sample.choices))
    try:
        context = spec.prompt.template.format(question=sample.question, choices=block,
                                              passage=sample.passage)
    except (KeyError, IndexError) as exc:
        raise QevalInputError(
            f"task {spec.id}: prompt template uses unknown field {exc}; use {{question}}, "
            "{choices} and {passage}"
        ) from None
    if spec.prompt.continuation == "letter":
        conts = [f" {letters[i]}" for i in range(len(sample.choices))]
    else:
        conts = [f" {c}" for c in sample.choices]
    return context, conts


@dataclass(frozen=True)
class ItemRequests:
    """Every request that scores one item: its k choices once, or, with rotated options, k
    choices under each rotation (rotation-major; `rotations` holds each block's offset r: block r
    shows option (j + r) mod k at position j)."""

    sample: Sample
    requests: tuple[LoglikelihoodRequest, ...]
    byte_lengths: tuple[int, ...]
    char_lengths: tuple[int, ...]  # of each choice's own text, without the leading delimiter
    prompt_hash: str
    rotations: tuple[int, ...] = (0,)


def rotation_offsets(spec: TaskSpec, sample: Sample) -> tuple[int, ...]:
    """The rotations an item is scored under: every cyclic one when the task asks for it (items
    rendered by their own code keep their one prompt)."""
    if spec.rotations == "cyclic" and sample.prompt_text is None:
        return tuple(range(len(sample.choices)))
    return (0,)


def rotated(sample: Sample, r: int) -> Sample:
    """The item with its options rotated left by `r` (option r shown first); the key follows."""
    if r == 0:
        return sample
    k = len(sample.choices)
    return sample.model_copy(update={"choices": sample.choices[r:] + sample.choices[:r],
                                     "target": (sample.target - r) % k})


def _split_continuation(tokenize, context: str, ctx: list[int], continuation: str) -> list[int]:
    """Token ids of the continuation as the model sees it after `context` (whose ids are `ctx`):
    lm-eval's rule, encode the whole string and cut at the context's length, so a merge across
    the boundary is tokenised the way the model would read it."""
    whole = tokenize(context + continuation)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return whole[len(ctx):]
    return tokenize(continuation)


def build_requests(task: Task, tokenize: Callable[[str], list[int]]) -> list[ItemRequests]:
    items = []
    for s in task.samples:
        offsets = rotation_offsets(task.spec, s)
        reqs, bytes_, chars = [], [], []
        h = hashlib.sha256()
        for r in offsets:
            shown = rotated(s, r)
            context, conts = render_prompt(task.spec, shown)
            ctx_ids = tokenize(context)  # once per item and rotation; every choice shares it
            if len(offsets) > 1:
                h.update(f"|r{r}:".encode())
            for i, cont in enumerate(conts):
                cont_ids = _split_continuation(tokenize, context, ctx_ids, cont)
                if i == 0:
                    h.update(("ctx:" + ",".join(map(str, ctx_ids))).encode())
                h.update((f"|c{i}:" + ",".join(map(str, cont_ids))).encode())
                # `choice` is the option's index in the item's own order, whatever its position.
                k = len(conts)
                reqs.append(LoglikelihoodRequest(tuple(ctx_ids), tuple(cont_ids), s.id, (i + r) % k))
            chars += [len(shown.choices[i]) if i < len(shown.choices) else len(c.lstrip())
                      for i, c in enumerate(conts)]
            bytes_ += [len(c.encode()) for c in conts]
        items.append(ItemRequests(s, tuple(reqs), tuple(bytes_), tuple(chars), h.hexdigest(), offsets))
    return items


def _choice_scores(spec: TaskSpec, lps, byte_lengths, char_lengths) -> tuple[float, ...]:
    if spec.choice_score == "mean_per_byte":
        return tuple(lp / max(b, 1) for lp, b in zip(lps, byte_lengths))
    if spec.choice_score == "mean_per_char":
        return tuple(lp / max(c, 1) for lp, c in zip(lps, char_lengths))
    return tuple(lps)


def _argmax(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties go to the earlier choice


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def item_record(task: Task, it: ItemRequests, lps: Sequence[float], variant: str) -> ItemRecord:
    """One item's record from its requests' log-probs. Rotated: each rotation's scores are put
    back in the item's own option order, and the record holds their means (choice_scores: of the
    log-softmax, so each rotation weighs the same) and the option each rotation picked."""
    s = it.sample
    k = len(it.requests) // len(it.rotations)
    blocks = []
    for b, r in enumerate(it.rotations):
        sl = slice(b * k, (b + 1) * k)
        shown = _choice_scores(task.spec, lps[sl], it.byte_lengths[sl], it.char_lengths[sl])
        order = [(j - r) % k for j in range(k)]  # option j sits at position (j − r) mod k
        blocks.append((np.array([lps[b * k + p] for p in order]), np.array([shown[p] for p in order])))
    if len(blocks) == 1:
        raw, scores = (tuple(float(x) for x in a) for a in blocks[0])
        picks = None
    else:
        raw = tuple(float(x) for x in np.mean([lp for lp, _ in blocks], axis=0))
        scores = tuple(float(x) for x in np.mean([_log_softmax(sc) for _, sc in blocks], axis=0))
        picks = tuple(_argmax(sc.tolist()) for _, sc in blocks)
    pred = _argmax(scores)
    return ItemRecord(
        task=task.spec.id, sample_id=s.id, variant=variant, prompt_hash=it.prompt_hash,
        choice_logprobs=raw, choice_scores=scores, prediction=pred, target=s.target,
        correct=pred == s.target, category=s.category, risk=s.risk, rotation_predictions=picks,
    )


def score_items(
    task: Task, items: Sequence[ItemRequests], backend: Backend, advance=None
) -> list[ItemRecord]:
    flat = [r for it in items for r in it.requests]
    logprobs = backend.loglikelihood(flat, advance)
    records, at = [], 0
    for it in items:
        n = len(it.requests)
        records.append(item_record(task, it, logprobs[at:at + n], backend.info.variant))
        at += n
    return records


def chance_levels(task: Task) -> list[float] | None:
    """Per-item chance accuracy when the task fixes one (None: 1/len(choices) per item)."""
    return [task.spec.chance_level] * len(task.samples) if task.spec.chance_level is not None else None


class ChoiceKind(ItemKind):
    name = "multiple_choice"
    record_type = ItemRecord
    comparison_type = TaskComparison
    paired_part = "items"
    paired_type = PairedItems
    unit = "items"
    source_format = "qeval_items"
    has_labels = True
    relative = False
    generates = False
    rotates = True
    # Only reference_text reads these: never part of a multiple-choice task's hash.
    hash_drops = frozenset({"baseline_top_k", "window_tokens"})
    fixed_chunk = None
    bar_suffix = ""
    label_free_metric = "choice_kl"
    calibrate_metrics = ("delta_accuracy", "choice_kl")
    rank_priority = 1
    rank_per_task = False

    def check_spec(self, path: object, spec: TaskSpec) -> None:
        pass

    def check_task(self, task: Task) -> None:
        pass

    def context_needed(self, spec: TaskSpec) -> tuple[int, str] | None:
        return None

    def prepare(self, task: Task, tokenize: Callable[[str], list[int]]) -> list[ItemRequests]:
        return build_requests(task, tokenize)

    def units(self, work: ItemRequests) -> int:
        return len(work.requests)

    def score_chunk(self, task: Task, chunk: Sequence[ItemRequests], backend: Backend,
                    advance: Progress | None, reference: object) -> tuple[list[ItemRecord], None]:
        return score_items(task, chunk, backend, advance), None

    def compare(self, task: Task, baseline, candidate, *, n_boot: int, seed: int) -> TaskComparison:
        return cmp.compare_task(baseline, candidate, chance=chance_levels(task),
                                clusters=cmp.task_clusters(task), cluster_by=task.spec.cluster_by,
                                cues=heuristic_credits(task.samples), n_boot=n_boot, seed=seed)

    def interval_limits(self, rules) -> tuple:
        return (*labelled_limits(rules), rules.max_choice_kl_mean, rules.max_choice_kl_p95,
                rules.max_top1_disagreement)

    def judge(self, comparison, rules, **kw):
        return gate.judge_task(comparison, rules, **kw)

    def calibrate_rows(self, task: Task, base_records, runs, metric: str):
        if metric == "delta_accuracy":
            return item_rows(base_records, runs, accuracy_change)
        return item_rows(base_records, runs, lambda b, c: choice_kl(b.choice_scores, c.choice_scores))


KIND = ChoiceKind()
