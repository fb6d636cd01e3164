"""Pair baseline and candidate records item by item and compute the degradation numbers.

Pure: lists of ItemRecord in, TaskComparison out. Pairing is by sample id; a comparison refuses
to run when the two sides did not score byte-identical prompts (different prompt hashes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from . import stats
from .types import CategoryBreakdown, ItemRecord, Risk, TaskComparison


class PromptMismatch(ValueError):
    """Baseline and candidate did not see the same token ids for an item."""


class PairingError(ValueError):
    """The record sets do not cover the same items."""


def pair_records(
    baseline: Sequence[ItemRecord], candidate: Sequence[ItemRecord]
) -> list[tuple[ItemRecord, ItemRecord]]:
    base_by_id = {r.sample_id: r for r in baseline}
    cand_by_id = {r.sample_id: r for r in candidate}
    if len(base_by_id) != len(baseline) or len(cand_by_id) != len(candidate):
        raise PairingError("duplicate sample ids in the records; each item must be scored once")
    missing = sorted(set(base_by_id) ^ set(cand_by_id))
    if missing:
        raise PairingError(
            f"baseline and candidate cover different items (first: {missing[0]!r}, "
            f"{len(missing)} in all); score both on the same task version"
        )
    pairs = []
    for sid in sorted(base_by_id):
        b, c = base_by_id[sid], cand_by_id[sid]
        if b.prompt_hash != c.prompt_hash:
            raise PromptMismatch(
                f"item {sid!r} of task {b.task!r}: the candidate scored different token ids than "
                "the baseline; variants must share the tokenizer and prompt template"
            )
        if len(b.choice_scores) != len(c.choice_scores) or b.target != c.target:
            raise PairingError(f"item {sid!r}: choices or answer key differ between records")
        pairs.append((b, c))
    if not pairs:
        raise PairingError("no items to compare")
    return pairs


def compare_task(
    baseline: Sequence[ItemRecord],
    candidate: Sequence[ItemRecord],
    *,
    chance: Sequence[float] | None = None,
    n_boot: int = stats.DEFAULT_BOOTSTRAP,
    seed: int = stats.DEFAULT_SEED,
) -> TaskComparison:
    pairs = pair_records(baseline, candidate)
    b_ok = np.array([b.correct for b, _ in pairs], dtype=float)
    c_ok = np.array([c.correct for _, c in pairs], dtype=float)
    kls = np.array([stats.choice_kl(b.choice_scores, c.choice_scores) for b, c in pairs])
    agree = sum(b.prediction == c.prediction for b, c in pairs)
    down = [b.sample_id for b, c in pairs if b.correct and not c.correct]
    up = [b.sample_id for b, c in pairs if c.correct and not b.correct]
    if chance is None:
        chance_per_item = [1.0 / len(b.choice_scores) for b, _ in pairs]
    else:
        if len(chance) != len(pairs):
            raise ValueError("one chance level per paired item is needed")
        chance_per_item = list(chance)
    high = {b.sample_id for b, _ in pairs if b.risk == Risk.high}
    return TaskComparison(
        task=pairs[0][0].task,
        candidate=pairs[0][1].variant,
        n=len(pairs),
        baseline_accuracy=float(b_ok.mean()),
        candidate_accuracy=float(c_ok.mean()),
        delta=stats.paired_bootstrap_ci(b_ok, c_ok, n_boot=n_boot, seed=seed),
        flips_correct_to_wrong=len(down),
        flips_wrong_to_correct=len(up),
        mcnemar_p=stats.mcnemar_exact(len(down), len(up)),
        choice_kl_mean=stats.bootstrap_mean_ci(kls, n_boot=n_boot, seed=seed),
        choice_kl_p99=float(np.quantile(kls, 0.99)),
        choice_kl_max=float(kls.max()),
        top1_agreement=stats.wilson_interval(agree, len(pairs)),
        baseline_chance=float(np.mean(chance_per_item)),
        baseline_above_chance_p=stats.above_chance_p(
            [b.correct for b, _ in pairs], chance_per_item
        ),
        high_risk_n=len(high),
        high_risk_flips=tuple(sid for sid in down if sid in high),
        categories=_by_category(pairs),
    )


def _by_category(pairs: list[tuple[ItemRecord, ItemRecord]]) -> tuple[CategoryBreakdown, ...]:
    groups: dict[str, list[tuple[ItemRecord, ItemRecord]]] = defaultdict(list)
    for b, c in pairs:
        groups[b.category].append((b, c))
    out = []
    for cat in sorted(groups):
        g = groups[cat]
        ba = sum(b.correct for b, _ in g) / len(g)
        ca = sum(c.correct for _, c in g) / len(g)
        out.append(
            CategoryBreakdown(
                category=cat,
                n=len(g),
                baseline_accuracy=ba,
                candidate_accuracy=ca,
                delta=ca - ba,
                flips_correct_to_wrong=sum(b.correct and not c.correct for b, c in g),
                flips_wrong_to_correct=sum(c.correct and not b.correct for b, c in g),
            )
        )
    return tuple(out)
