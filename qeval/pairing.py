"""Pair baseline and candidate records item by item and compute the degradation numbers.

Pure: lists of ItemRecord in, TaskComparison out. Pairing is by sample id; a comparison refuses
to run when the two sides did not score byte-identical prompts (different prompt hashes).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

from qeval import stats
from qeval.errors import PairingError, PromptMismatch  # noqa: F401 - raised here, imported from here by callers
from qeval.item_audit import best_cue
from qeval.types import (
    CategoryBreakdown, GenerationComparison, GenerationRecord, Interval, ItemRecord, NumericAnswer,
    PairedItems, Risk, RiskBreakdown, RotationComparison, RotationStats, Sample, Task, TaskComparison,
    PositionBucket, TextComparison, TextRecord, TextUnits,
)

Paired = TypeVar("Paired", ItemRecord, GenerationRecord)


def pair_records(
    baseline: Sequence[ItemRecord], candidate: Sequence[ItemRecord]
) -> list[tuple[ItemRecord, ItemRecord]]:
    pairs = _pair_by_sample(baseline, candidate)
    for b, c in pairs:
        if len(b.choice_scores) != len(c.choice_scores) or b.target != c.target:
            raise PairingError(f"item {b.sample_id!r}: choices or answer key differ between records")
    return pairs


def pair_generations(baseline: Sequence[GenerationRecord], candidate: Sequence[GenerationRecord]
                     ) -> list[tuple[GenerationRecord, GenerationRecord]]:
    pairs = _pair_by_sample(baseline, candidate)
    for b, c in pairs:
        if b.n_choices != c.n_choices or b.target != c.target:
            raise PairingError(f"item {b.sample_id!r}: choices or answer key differ between records")
    return pairs


def _pair_by_sample(baseline: Sequence[Paired], candidate: Sequence[Paired]) -> list[tuple[Paired, Paired]]:
    """Pairs in sample-id order; refuses duplicates, uncovered items and different prompts."""
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
        pairs.append((b, c))
    if not pairs:
        raise PairingError("no items to compare")
    return pairs


def _labelled_fields(pairs: Sequence[tuple[Paired, Paired]], *, default_chance: Sequence[float],
                     chance: Sequence[float] | None, clusters: Mapping[str, str] | None,
                     cluster_by: str | None, choice_kl: Sequence[float], agree: np.ndarray,
                     cues: Mapping[str, Mapping[str, float]] | None = None
                     ) -> tuple[dict, tuple[str, ...] | None]:
    """The fields every labelled comparison (multiple choice, generate) shares, and the cluster
    labels: both accuracies, the paired Δ with its interval, flips both ways, discordance, exact
    McNemar, the chance guard (guessing, and the best answer-cue heuristic of `cues`: heuristic →
    sample id → its score, qeval/item_audit.py), clustering, high-risk and per-category
    breakdowns, paired items."""
    ids = [b.sample_id for b, _ in pairs]
    n = len(pairs)
    b_ok = np.array([b.correct for b, _ in pairs], dtype=bool)
    c_ok = np.array([c.correct for _, c in pairs], dtype=bool)
    high = np.array([b.risk == Risk.high for b, _ in pairs], dtype=bool)
    if chance is not None and len(chance) != n:
        raise ValueError("one chance level per paired item is needed")
    chance_per_item = list(default_chance if chance is None else chance)
    labels = _cluster_labels(ids, clusters)
    deff = stats.design_effect(c_ok.astype(float) - b_ok.astype(float), labels)
    down, up = int(np.sum(b_ok & ~c_ok)), int(np.sum(c_ok & ~b_ok))
    cue = best_cue(cues, ids) if cues else None
    items = PairedItems(
        sample_ids=tuple(ids), baseline_correct=tuple(bool(x) for x in b_ok),
        candidate_correct=tuple(bool(x) for x in c_ok), choice_kl=tuple(float(k) for k in choice_kl),
        agree=tuple(bool(x) for x in agree), high_risk=tuple(bool(x) for x in high), clusters=labels,
    )
    return dict(
        task=pairs[0][0].task, candidate=pairs[0][1].variant, n=n,
        baseline_accuracy=float(b_ok.mean()), candidate_accuracy=float(c_ok.mean()),
        delta=stats.paired_difference_ci(up, down, n, design_effect=deff),
        flips_correct_to_wrong=down, flips_wrong_to_correct=up, discordance=(up + down) / n,
        mcnemar_p=stats.mcnemar_exact(down, up),
        baseline_chance=float(np.mean(chance_per_item)),
        baseline_above_chance_p=stats.above_chance_p(list(b_ok), chance_per_item),
        cue_heuristic=cue[0] if cue else None, cue_accuracy=cue[1] if cue else None,
        baseline_above_cue_p=stats.binom_upper_tail(int(b_ok.sum()), n, cue[1]) if cue else None,
        cluster_by=cluster_by if labels is not None else None,
        n_clusters=len(set(labels)) if labels is not None else None,
        design_effect=deff, high_risk=risk_breakdown(items), categories=_by_category(pairs), items=items,
    ), labels


def compare_task(
    baseline: Sequence[ItemRecord],
    candidate: Sequence[ItemRecord],
    *,
    chance: Sequence[float] | None = None,
    clusters: Mapping[str, str] | None = None,
    cluster_by: str | None = None,
    cues: Mapping[str, Mapping[str, float]] | None = None,
    n_boot: int = stats.DEFAULT_BOOTSTRAP,
    seed: int = stats.DEFAULT_SEED,
) -> TaskComparison:
    """`clusters` maps sample id → cluster label (from the task's `cluster_by` field); with it,
    intervals account for items that share a source. `cues`: the answer-cue heuristics' scores
    per item (item_audit.heuristic_credits), for the chance guard."""
    pairs = pair_records(baseline, candidate)
    kls = np.array([stats.choice_kl(b.choice_scores, c.choice_scores) for b, c in pairs])
    agree = np.array([b.prediction == c.prediction for b, c in pairs], dtype=bool)
    fields, labels = _labelled_fields(
        pairs, default_chance=[1.0 / len(b.choice_scores) for b, _ in pairs], chance=chance,
        clusters=clusters, cluster_by=cluster_by, choice_kl=kls, agree=agree, cues=cues)
    return TaskComparison(
        **fields,
        choice_kl_mean=stats.bootstrap_mean_ci(kls, n_boot=n_boot, seed=seed, clusters=labels),
        choice_kl_p95=stats.quantile_ci(kls, 0.95),
        choice_kl_p99=float(np.quantile(kls, 0.99)),
        choice_kl_max=float(kls.max()),
        top1_agreement=_share(agree, labels),
        rotation=compare_rotations(pairs, labels, n_boot=n_boot, seed=seed),
    )


def _rotation_flags(r: ItemRecord) -> tuple[bool, float, bool]:
    """Per item: the same option under every rotation; share of rotations that picked the key;
    the key under every rotation."""
    picks = r.rotation_predictions or (r.prediction,)
    hits = [p == r.target for p in picks]
    return len(set(picks)) == 1, sum(hits) / len(hits), all(hits)


def rotation_stats(records: Sequence[ItemRecord], labels: Sequence[str] | None = None) -> RotationStats:
    """How one variant answered under rotated options. Positions: rotation r shows option j at
    (j − r) mod k, so each pick's position is recovered from the record alone."""
    flags = [_rotation_flags(r) for r in records]
    consistent = np.array([f[0] for f in flags], dtype=bool)
    width = max(len(r.choice_scores) for r in records)
    positions = np.zeros(width)
    scorings = 0
    for r in records:
        k = len(r.choice_scores)
        for rot, pick in enumerate(r.rotation_predictions or (r.prediction,)):
            positions[(pick - rot) % k] += 1
            scorings += 1
    return RotationStats(
        variant=records[0].variant, n=len(records), rotations=scorings,
        accuracy=float(np.mean([r.correct for r in records])),
        mean_rotation_accuracy=float(np.mean([f[1] for f in flags])),
        all_rotations_accuracy=float(np.mean([f[2] for f in flags])),
        consistency=_share(consistent, tuple(labels) if labels is not None else None),
        position_shares=tuple(float(x) for x in positions / scorings),
    )


def compare_rotations(pairs: Sequence[tuple[ItemRecord, ItemRecord]], labels: tuple[str, ...] | None, *,
                      n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = stats.DEFAULT_SEED
                      ) -> RotationComparison | None:
    """Both sides' rotation statistics and the paired changes; None when the task was not scored
    under rotated options."""
    if any(b.rotation_predictions is None or c.rotation_predictions is None for b, c in pairs):
        return None
    base = [b for b, _ in pairs]
    cand = [c for _, c in pairs]
    b_flags = [_rotation_flags(r) for r in base]
    c_flags = [_rotation_flags(r) for r in cand]
    b_cons = np.array([f[0] for f in b_flags], dtype=bool)
    c_cons = np.array([f[0] for f in c_flags], dtype=bool)
    up, down = int(np.sum(c_cons & ~b_cons)), int(np.sum(b_cons & ~c_cons))
    diffs = np.array([c[1] - b[1] for b, c in zip(b_flags, c_flags)])
    deff = stats.design_effect((c_cons.astype(float) - b_cons.astype(float)), labels)
    return RotationComparison(
        baseline=rotation_stats(base, labels), candidate=rotation_stats(cand, labels),
        consistency_delta=stats.paired_difference_ci(up, down, len(pairs), design_effect=deff),
        mean_rotation_accuracy_delta=stats.bootstrap_mean_ci(diffs, n_boot=n_boot, seed=seed,
                                                             clusters=labels),
    )


def _cluster_labels(ids: Sequence[str], clusters: Mapping[str, str] | None) -> tuple[str, ...] | None:
    if clusters is None:
        return None
    missing = [sid for sid in ids if sid not in clusters]
    if missing:
        raise PairingError(f"item {missing[0]!r} has no cluster label; every item needs one")
    return tuple(clusters[sid] for sid in ids)


def _share(flags: np.ndarray, labels: tuple[str, ...] | None) -> Interval:
    """Wilson interval of a share of items, widened by the design effect when clustered."""
    return stats.wilson_interval(int(flags.sum()), len(flags),
                                 design_effect=stats.design_effect(flags.astype(float), labels))


def compare_generation(
    baseline: Sequence[GenerationRecord],
    candidate: Sequence[GenerationRecord],
    *,
    chance: Sequence[float] | None = None,
    clusters: Mapping[str, str] | None = None,
    cluster_by: str | None = None,
    cues: Mapping[str, Mapping[str, float]] | None = None,
    tolerances: Mapping[str, NumericAnswer] | None = None,
) -> GenerationComparison:
    """Paired numbers for a generate task. `chance`: one guessing accuracy per item; by default
    1/len(choices) for items with choices and 0 for free-form answers. Two failed extractions
    count as the same answer: the candidate behaves as the baseline does. `tolerances`: the keys
    of numeric items (sample id → NumericAnswer), whose answers are the same when both are
    right or their numbers lie within the item's tolerance of each other."""
    pairs = pair_generations(baseline, candidate)
    same_answer = np.array([same_answer_of(b, c, (tolerances or {}).get(b.sample_id)) for b, c in pairs],
                           dtype=bool)
    same_output = np.array([b.output_hash == c.output_hash for b, c in pairs], dtype=bool)
    same_normalised = np.array([b.normalised_hash == c.normalised_hash for b, c in pairs], dtype=bool)
    b_failed = np.array([b.answer_hash is None for b, _ in pairs], dtype=bool)
    c_failed = np.array([c.answer_hash is None for _, c in pairs], dtype=bool)
    fields, labels = _labelled_fields(
        pairs, default_chance=[1.0 / b.n_choices if b.n_choices else 0.0 for b, _ in pairs],
        chance=chance, clusters=clusters, cluster_by=cluster_by, choice_kl=(), agree=same_answer,
        cues=cues)
    return GenerationComparison(
        **fields,
        answer_agreement=_share(same_answer, labels),
        exact_output_agreement=_share(same_output, labels),
        normalised_output_agreement=_share(same_normalised, labels),
        baseline_extraction_failure=_share(b_failed, labels),
        candidate_extraction_failure=_share(c_failed, labels),
        baseline_mean_output_tokens=float(np.mean([b.n_output_tokens for b, _ in pairs])),
        candidate_mean_output_tokens=float(np.mean([c.n_output_tokens for _, c in pairs])),
        baseline_stop_reasons=dict(sorted(Counter(b.stop_reason for b, _ in pairs).items())),
        candidate_stop_reasons=dict(sorted(Counter(c.stop_reason for _, c in pairs).items())),
    )


def same_answer_of(b: GenerationRecord, c: GenerationRecord, key: NumericAnswer | None) -> bool:
    """Whether two records extracted the same answer: equal answer hashes, or for a numeric item
    both right, or both numbers within the item's tolerance of each other."""
    if key is None or b.answer_value is None or c.answer_value is None:
        return b.answer_hash == c.answer_hash
    return (b.correct and c.correct) or key.accepts(c.answer_value, reference=b.answer_value)


def risk_breakdown(items: PairedItems) -> RiskBreakdown:
    idx = [i for i, h in enumerate(items.high_risk) if h]
    b = [items.baseline_correct[i] for i in idx]
    c = [items.candidate_correct[i] for i in idx]
    return RiskBreakdown(
        n=len(idx),
        baseline_accuracy=sum(b) / len(idx) if idx else None,
        candidate_accuracy=sum(c) / len(idx) if idx else None,
        correct_to_wrong=tuple(items.sample_ids[i] for i in idx
                               if items.baseline_correct[i] and not items.candidate_correct[i]),
        wrong_to_correct=tuple(items.sample_ids[i] for i in idx
                               if items.candidate_correct[i] and not items.baseline_correct[i]),
    )


def task_clusters(task: Task) -> dict[str, str] | None:
    """sample id → cluster label for a task that declares `cluster_by`, else None. An item
    without a cluster is a cluster of its own."""
    field = task.spec.cluster_by
    if field is None:
        return None
    return {s.id: cluster_label(s, field) for s in task.samples}


def cluster_label(sample: Sample, field: str) -> str:
    """The sample's `field` (cluster or category); an item without a cluster gets a label of
    its own (the prefix keeps it apart from any declared cluster name)."""
    label = getattr(sample, field)
    return label if label is not None else f"(item {sample.id})"


def _by_category(pairs: list[tuple[Paired, Paired]]) -> tuple[CategoryBreakdown, ...]:
    groups: dict[str, list[tuple[Paired, Paired]]] = defaultdict(list)
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


def _ratio_interval(num: np.ndarray, den: np.ndarray, *, n_boot: int, seed: int,
                    transform=None) -> Interval:
    boot = stats.bootstrap_ratio(num, den, n_boot=n_boot, seed=seed)
    est = float(num.sum() / den.sum())
    lo, hi = np.quantile(boot, [0.025, 0.975])
    if transform is not None:
        est, lo, hi = transform(est), transform(lo), transform(hi)
    return Interval(estimate=float(est), low=float(lo), high=float(hi),
                    method=f"bootstrap over passages, {n_boot} resamples, percentile")


def _text_unit(r: TextRecord, cluster_by: str | None) -> str:
    """The resampling unit of a passage: itself, or its cluster when the task declares clusters."""
    if cluster_by == "cluster" and r.cluster:
        return r.cluster
    if cluster_by == "category":
        return r.category
    return r.sample_id


def text_units(records: Sequence[TextRecord], cluster_by: str | None) -> TextUnits:
    """Sum each passage's numbers, merged by cluster when the task declares clusters."""
    acc: dict[str, list[float]] = {}
    for r in sorted(records, key=lambda r: r.sample_id):
        a = acc.setdefault(_text_unit(r, cluster_by), [0, 0.0, 0, 0.0])
        a[0] += r.n_tokens
        a[1] += float(np.sum(r.kl))
        a[2] += r.same_top
        a[3] += r.nll_candidate - r.nll_baseline
    ids = sorted(acc)
    return TextUnits(ids=tuple(ids), tokens=tuple(int(acc[i][0]) for i in ids),
                     kl_sum=tuple(acc[i][1] for i in ids), same_top=tuple(int(acc[i][2]) for i in ids),
                     delta_nll=tuple(acc[i][3] for i in ids))


def position_kld(records: Sequence[TextRecord], edges: Sequence[int], *, cluster_by: str | None = None,
                 n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = stats.DEFAULT_SEED
                 ) -> tuple[PositionBucket, ...]:
    """Per-token KL by position bucket ([0, e1), …, [ek, ∞); see stats.position_bucket_sums):
    each bucket's mean is Σ KL / tokens over the passages with tokens in it, its interval a
    bootstrap over those passages (or their clusters), never over tokens. Buckets no passage
    reaches are left out."""
    nb = len(edges) + 1
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    values: list[list[np.ndarray]] = [[] for _ in range(nb)]
    passages = np.zeros(nb, dtype=np.int64)
    for r in sorted(records, key=lambda r: r.sample_id):
        s, c = stats.position_bucket_sums(r.kl, edges)
        u = _text_unit(r, cluster_by)
        sums[u] = sums.get(u, 0.0) + s
        counts[u] = counts.get(u, 0) + c
        passages += c > 0
        kl = np.asarray(r.kl, dtype=np.float64)
        bounds = [0, *edges]
        for j in range(nb):
            lo = max(bounds[j] - 1, 0)
            hi = edges[j] - 1 if j < len(edges) else kl.size
            if hi > lo:
                values[j].append(kl[lo:hi])
    units = sorted(sums)
    out = []
    for j in range(nb):
        keep = [u for u in units if counts[u][j] > 0]
        if not keep:
            continue
        num = np.array([sums[u][j] for u in keep])
        den = np.array([counts[u][j] for u in keep], dtype=np.float64)
        out.append(PositionBucket(
            start=0 if j == 0 else int(edges[j - 1]), end=int(edges[j]) if j < len(edges) else None,
            n=int(passages[j]), n_tokens=int(den.sum()),
            kld_mean=_ratio_interval(num, den, n_boot=n_boot, seed=seed),
            kld_p99=float(np.quantile(np.concatenate(values[j]), 0.99))))
    return tuple(out)


def compare_text(records: Sequence[TextRecord], *, top_k: int, cluster_by: str | None = None,
                 n_boot: int = stats.DEFAULT_BOOTSTRAP, seed: int = stats.DEFAULT_SEED,
                 position_buckets: Sequence[int] | None = None) -> TextComparison:
    """Summarise a candidate's per-passage TextRecords (each already paired with the baseline:
    its KL and both negative log-likelihoods were computed on identical token ids)."""
    if not records:
        raise PairingError("no passages to compare")
    ids = [r.sample_id for r in records]
    if len(set(ids)) != len(ids):
        raise PairingError("duplicate passage ids in the records; each passage must be scored once")
    u = text_units(records, cluster_by)
    tokens = np.array(u.tokens, dtype=np.float64)
    kl_all = np.concatenate([np.asarray(r.kl, dtype=np.float64) for r in records])
    nll_b = sum(r.nll_baseline for r in records)
    nll_c = sum(r.nll_candidate for r in records)
    n_tok = int(tokens.sum())
    common = dict(n_boot=n_boot, seed=seed)
    dlp = _ratio_interval(np.array(u.delta_nll), tokens, **common)
    p50, p90, p99, p999 = np.quantile(kl_all, [0.5, 0.9, 0.99, 0.999])
    return TextComparison(
        task=records[0].task, candidate=records[0].variant, n=len(records), n_units=len(u.ids),
        n_tokens=n_tok, top_k=top_k,
        kld_mean=_ratio_interval(np.array(u.kl_sum), tokens, **common),
        kld_se=stats.ratio_se(u.kl_sum, tokens),
        kld_median=float(p50), kld_p90=float(p90), kld_p99=float(p99), kld_p999=float(p999),
        kld_max=float(kl_all.max()),
        same_top=_ratio_interval(np.array(u.same_top, dtype=np.float64), tokens, **common),
        delta_log_ppl=dlp,
        ppl_baseline=float(np.exp(nll_b / n_tok)), ppl_candidate=float(np.exp(nll_c / n_tok)),
        ppl_ratio=_ratio_interval(np.array(u.delta_nll), tokens, transform=np.exp, **common),
        units=u,
        **({} if position_buckets is None else
           {"by_position": position_kld(records, position_buckets, cluster_by=cluster_by, **common)}),
    )
