"""Token-level, label-free scoring of reference text (task kind `reference_text`).

The baseline reads each passage once; at every position its next-token distribution is kept
bounded — the top-k token ids with their log-probs plus the exact probability mass of the rest
(the tail) — so the baseline need not be in memory beside a candidate. A candidate then reads the
same token ids and KL(baseline ‖ candidate) is computed over those k + 1 bins. Merging outcomes
into bins can only lose information, so this KL never exceeds the full-vocabulary KL (the data
processing inequality); benchmarks/reference_text_topk.py measures how much it misses.

Distributions hold token ids, which are text: they live in memory for one run and are never
written anywhere. A candidate's TextRecord holds numbers only (per-position KL, counts, sums).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qeval import gate
from qeval import pairing as cmp
from qeval.engines.base import Backend, NonFiniteScores, Progress
from qeval.errors import QevalInputError
from qeval.types import BaselineDist
from qeval.types import Task, TaskSpec, TextComparison, TextRecord, TextUnits

# Reference passages per journal chunk: each window is scored on its own, so this sets only how
# much work a kill can lose (a passage is hundreds of tokens), never a number.
CHUNK_PASSAGES = 8

# Positions whose logits are reduced together when a backend hands over whole log-prob tables
# (fake and test backends; the real engines hand over slices of their own size).
_ROWS = 256


@dataclass(frozen=True)
class PassageTokens:
    id: str
    category: str
    cluster: str | None
    windows: tuple[tuple[int, ...], ...]  # scored independently; each window's first token is context
    prompt_hash: str

    @property
    def n_scored(self) -> int:
        return sum(len(w) - 1 for w in self.windows)


def tokenize_passages(spec: TaskSpec, passages, tokenize: Callable[[str], list[int]]) -> list[PassageTokens]:
    out = []
    w = spec.window_tokens
    for p in passages:
        ids = tokenize(p.text)
        if len(ids) < 2:
            raise QevalInputError(f"task {spec.id}, passage {p.id}: fewer than 2 tokens; "
                                  "reference passages need text to score")
        # Windows overlap by one token so that every token after the first is predicted once.
        windows = tuple(tuple(ids[s:s + w]) for s in range(0, len(ids) - 1, w - 1))
        digest = hashlib.sha256(("text:" + ",".join(map(str, ids))).encode()).hexdigest()
        out.append(PassageTokens(p.id, p.category, p.cluster, windows, digest))
    return out


@dataclass(frozen=True)
class CandidateView:
    """What a candidate's next-token distributions give against one baseline window: its
    log-probs at the baseline's top-k ids, its mass outside them, its top token and its
    log-prob of the token that follows."""

    at_top: np.ndarray  # (positions, k) float64 (values rounded to float32 as the baseline's are)
    tail_mass: np.ndarray  # (positions,) float64
    argmax: np.ndarray  # (positions,) int64: the first highest-scoring token
    reference_logprob: np.ndarray  # (positions,) float64


def logit_slices(backend: Backend, tokens: Sequence[int]):
    """(first position, float32 logits of the following positions) over the positions that
    predict tokens[1:], in order: the backend's own slices (never the whole (positions ×
    vocabulary) table at once), or, for a backend that only offers `token_logprobs`, its table
    cut into slices (log-probs are logits whose log-sum-exp is 0). A slice is scratch: its
    reader may overwrite it."""
    own = getattr(backend, "logit_slices", None)
    if own is not None:
        yield from own(tokens)
        return
    table = np.ascontiguousarray(backend.token_logprobs(tokens), dtype=np.float32)
    yield from _table_slices(table)


def _table_slices(table: np.ndarray):
    """A whole table in slices the reductions may overwrite (copies: the table stays intact)."""
    import torch

    for s in range(0, table.shape[0], _ROWS):
        yield s, torch.from_numpy(table[s:s + _ROWS].copy())


def _masses(logits, ids, at, row_max):
    """log Σ exp(logits) per row, and the probability outside `ids` (whose logits are `at`),
    summed exactly over the rest of the vocabulary (not 1 − Σ top-k, which loses the tail to
    rounding when the top k hold nearly everything). One exp pass in float32, in place (the
    slice is scratch: everything else is read from it first), and torch's float32 sum (a
    cascade, ~1e-7 relative on positive terms; asking it for float64 copies the slice first, 25×
    slower); the total is the rest plus the top k's share in float64, positive terms only, so
    nothing cancels."""
    import torch

    logits.sub_(row_max[:, None]).exp_()
    logits.scatter_(1, ids, 0.0)
    rest = logits.sum(dim=1).double()
    shift = row_max.double()[:, None]
    total = rest + torch.exp(at.double() - shift).sum(dim=1)
    return shift[:, 0] + torch.log(total), rest / total


def _targets(window: Sequence[int] | None, start: int, n: int):
    import torch

    if window is None:
        return None
    return torch.as_tensor(window[start + 1:start + 1 + n], dtype=torch.long)[:, None]


def _gather(logits, targets):
    return None if targets is None else logits.gather(1, targets)[:, 0]


def _reference(ref, lse) -> np.ndarray:
    """log p(the token that follows), or NaN where the caller gave no tokens."""
    if ref is None:
        return np.full(lse.shape[0], np.nan)
    return (ref.double() - lse).numpy()


def baseline_window(slices, window: Sequence[int] | None, k: int) -> BaselineDist:
    """One window's bounded distributions from its logit slices: the exact top k (torch.topk,
    highest first), their log-probs, the tail mass and the reference token's log-prob."""
    import torch

    parts = []
    with torch.inference_mode():
        for start, logits in slices:
            kk = min(k, logits.shape[1])
            vals, ids = torch.topk(logits, kk, dim=1)
            ref = _gather(logits, _targets(window, start, logits.shape[0]))
            lse, tail = _masses(logits, ids, vals, vals[:, 0])
            parts.append((ids.to(torch.int32).numpy(), (vals.double() - lse[:, None]).float().numpy(),
                          tail.numpy(), _reference(ref, lse)))
    return BaselineDist(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def candidate_window(slices, window: Sequence[int] | None, dist: BaselineDist) -> CandidateView:
    """A candidate's view of one window against the baseline's bounded distributions."""
    import torch

    parts = []
    with torch.inference_mode():
        for start, logits in slices:
            n = logits.shape[0]
            ids = torch.from_numpy(np.ascontiguousarray(dist.top_ids[start:start + n], dtype=np.int64))
            row_max, arg = logits.max(dim=1)  # the first maximum: ties to the lowest id, as argmax
            at = logits.gather(1, ids)
            ref = _gather(logits, _targets(window, start, n))
            lse, tail = _masses(logits, ids, at, row_max)
            parts.append(((at.double() - lse[:, None]).float().double().numpy(), tail.numpy(),
                          arg.numpy(), _reference(ref, lse)))
    return CandidateView(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def baseline_distributions(backend: Backend, passages: Sequence[PassageTokens], k: int,
                           advance=None) -> dict[str, list[BaselineDist]]:
    out: dict[str, list[BaselineDist]] = {}
    for p in passages:
        out[p.id] = [baseline_window(logit_slices(backend, w), w, k) for w in p.windows]
        if not all(np.isfinite(d.tail_mass).all() and np.isfinite(d.top_logprobs).all() for d in out[p.id]):
            raise NonFiniteScores(f"{backend.info.variant}: non-finite log-probs on reference text "
                                  f"(passage {p.id}); the model is numerically broken (weights that "
                                  "overflow in this dtype); check the checkpoint's weights or try another dtype")
        if advance:
            advance(p.n_scored)
    return out


def view_kl(dist: BaselineDist, view: CandidateView) -> np.ndarray:
    """KL(baseline ‖ candidate) per position over the baseline's top-k tokens plus one tail bin."""
    blp = dist.top_logprobs.astype(np.float64)
    head = (np.exp(blp) * (blp - view.at_top)).sum(axis=1)
    p_tail, q_tail = dist.tail_mass, view.tail_mass
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(p_tail > 0, p_tail * (np.log(p_tail) - np.log(np.maximum(q_tail, 1e-300))), 0.0)
    # Rounding can leave −1e-9 where the distributions agree; KL is never negative.
    return np.maximum(head + tail, 0.0)


def binned_kl(dist: BaselineDist, cand_logprobs: np.ndarray) -> np.ndarray:
    """view_kl from a candidate's whole (positions × vocabulary) log-prob table."""
    table = np.ascontiguousarray(cand_logprobs, dtype=np.float32)
    return view_kl(dist, candidate_window(_table_slices(table), None, dist))


def check_same_tokens(task_id: str, passages: Sequence[PassageTokens], expected_hashes: dict[str, str],
                      variant: str) -> None:
    """Refuse a candidate whose token ids differ from the baseline's, naming the first passage."""
    for p in passages:
        if expected_hashes.get(p.id) != p.prompt_hash:
            raise QevalInputError(
                f"task {task_id}, passage {p.id}: {variant} tokenises the text differently from "
                "the baseline; the comparison needs identical token ids (same tokenizer and "
                "pre-tokenizer)")


def score_passages(task_id: str, passages: Sequence[PassageTokens],
                   baseline: dict[str, list[BaselineDist]], backend: Backend,
                   advance=None) -> list[TextRecord]:
    """Candidate records against the baseline's distributions (token ids already checked)."""
    records = []
    for p in passages:
        kls, same, nll_b, nll_c = [], 0, 0.0, 0.0
        for window, dist in zip(p.windows, baseline[p.id]):
            view = candidate_window(logit_slices(backend, window), window, dist)
            kls.append(view_kl(dist, view))
            same += int((view.argmax == dist.top_ids[:, 0]).sum())
            nll_b -= float(dist.reference_logprob.sum())
            nll_c -= float(view.reference_logprob.sum())
        kl = np.concatenate(kls)
        if not np.isfinite(kl).all() or not np.isfinite(nll_c):
            raise QevalInputError(f"{backend.info.variant}: non-finite log-probs on passage {p.id}; "
                                  "the model or its quantization is numerically broken")
        records.append(TextRecord(
            task=task_id, sample_id=p.id, variant=backend.info.variant, prompt_hash=p.prompt_hash,
            n_tokens=int(kl.size), kl=tuple(float(x) for x in kl), same_top=same,
            nll_baseline=nll_b, nll_candidate=nll_c, category=p.category, cluster=p.cluster))
        if advance:
            advance(p.n_scored)
    return records


class ReferenceTextKind:
    """Label-free, per token: the baseline keeps bounded distributions (`reference`), each
    candidate's records are its KL against them; no baseline records, nothing to pair after."""

    name = "reference_text"
    record_type = TextRecord
    comparison_type = TextComparison
    paired_part = "units"
    paired_type = TextUnits
    unit = "passages"
    source_format = "qeval_passages"
    has_labels = False
    relative = True
    generates = False
    rotates = False
    hash_drops: frozenset[str] = frozenset()
    fixed_chunk = CHUNK_PASSAGES
    bar_suffix = " (tokens)"
    label_free_metric = "token_kld"
    calibrate_metrics = ("token_kld", "delta_log_ppl", "same_top")
    rank_priority = 0
    rank_per_task = True

    def check_spec(self, path: object, spec: TaskSpec) -> None:
        edges = spec.position_buckets
        if edges is not None and edges[-1] > spec.window_tokens:
            # Past the window, a position's context is cut where its window starts: its bucket
            # would no longer measure what that much context does.
            raise QevalInputError(
                f"{path}: position_buckets ends at {edges[-1]} tokens but window_tokens is "
                f"{spec.window_tokens}, so later positions would be scored without their full "
                f"context; set window_tokens to at least {edges[-1]} or end the buckets there")

    def check_task(self, task: Task) -> None:
        pass

    def context_needed(self, spec: TaskSpec) -> tuple[int, str] | None:
        return spec.window_tokens, f"reference-text windows ({spec.window_tokens} tokens)"

    def prepare(self, task: Task, tokenize: Callable[[str], list[int]]) -> list[PassageTokens]:
        return tokenize_passages(task.spec, task.passages, tokenize)

    def identify(self, work: PassageTokens) -> tuple[str, str]:
        return work.id, work.prompt_hash

    def units(self, work: PassageTokens) -> int:
        return work.n_scored

    def check_same(self, task: Task, expected, work: Sequence[PassageTokens], variant: str) -> None:
        check_same_tokens(task.spec.id, work, expected, variant)

    def reference(self, task: Task, work: Sequence[PassageTokens], backend: Backend, advance: Progress | None
                  ) -> tuple[dict[str, str], dict[str, list[BaselineDist]]]:
        """Each passage's token hash and bounded distributions (each window scored on its own, so
        chunks would change nothing here)."""
        return ({p.id: p.prompt_hash for p in work},
                baseline_distributions(backend, work, task.spec.baseline_top_k, advance))

    def score_chunk(self, task: Task, chunk: Sequence[PassageTokens], backend: Backend,
                    advance: Progress | None, reference: dict[str, list[BaselineDist]]
                    ) -> tuple[list[TextRecord], None]:
        return score_passages(task.spec.id, chunk, reference, backend, advance), None

    def compare(self, task: Task, baseline, candidate, *, n_boot: int, seed: int) -> TextComparison:
        return cmp.compare_text(candidate, top_k=task.spec.baseline_top_k, cluster_by=task.spec.cluster_by,
                                n_boot=n_boot, seed=seed, position_buckets=task.spec.position_buckets)

    def interval_limits(self, rules) -> tuple:
        return rules.max_token_kld_mean, rules.max_ppl_ratio, rules.max_top_token_disagreement

    def judge(self, comparison, rules, **kw):
        return gate.judge_text(comparison, rules, **kw)

    def calibrate_rows(self, task: Task, base_records, runs, metric: str):
        first = {r.sample_id: r for r in runs[0]}
        ids = sorted(first)
        den = np.array([first[i].n_tokens for i in ids], dtype=np.float64)  # same passages every seed
        rows = []
        for run in runs:
            by = {r.sample_id: r for r in run}
            recs: list[TextRecord] = [by[i] for i in ids]
            if metric == "token_kld":
                rows.append([float(np.sum(r.kl)) for r in recs])
            elif metric == "delta_log_ppl":
                rows.append([r.nll_candidate - r.nll_baseline for r in recs])
            else:
                rows.append([float(r.same_top) for r in recs])
        return np.array(rows), den, ids


KIND = ReferenceTextKind()
