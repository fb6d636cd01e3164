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

from .backends.base import Backend
from .errors import QevalInputError
from .types import TaskSpec, TextRecord

# Positions processed together: bounds the float64 temporaries to a few hundred MB at a
# 50k-token vocabulary.
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


@dataclass(frozen=True)
class BaselineDist:
    """One window's bounded baseline distributions (in memory only)."""

    top_ids: np.ndarray  # (positions, k) int32, highest probability first
    top_logprobs: np.ndarray  # (positions, k) float32
    tail_mass: np.ndarray  # (positions,) float64: probability outside the top k
    reference_logprob: np.ndarray  # (positions,) float64: log p(the token that follows)


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


def _tail_mass(logprobs: np.ndarray, top_ids: np.ndarray) -> np.ndarray:
    """Exact probability outside `top_ids`, summed over the rest of the vocabulary (not 1 − Σ
    top-k, which loses the tail to rounding when the top k hold nearly everything)."""
    p = np.exp(logprobs.astype(np.float64))
    np.put_along_axis(p, top_ids, 0.0, axis=1)
    return p.sum(axis=1)


def baseline_distributions(backend: Backend, passages: Sequence[PassageTokens], k: int,
                           advance=None) -> dict[str, list[BaselineDist]]:
    out: dict[str, list[BaselineDist]] = {}
    for p in passages:
        dists = []
        for window in p.windows:
            lp = backend.token_logprobs(window)
            kk = min(k, lp.shape[1])
            parts = []
            for s in range(0, lp.shape[0], _ROWS):
                rows = lp[s:s + _ROWS]
                ids = np.argpartition(-rows, kk - 1, axis=1)[:, :kk]
                vals = np.take_along_axis(rows, ids, axis=1)
                order = np.argsort(-vals, axis=1, kind="stable")
                ids = np.take_along_axis(ids, order, axis=1).astype(np.int32)
                parts.append((ids, np.take_along_axis(vals, order, axis=1).astype(np.float32),
                              _tail_mass(rows, ids)))
            ref = lp[np.arange(lp.shape[0]), np.asarray(window[1:])].astype(np.float64)
            dists.append(BaselineDist(np.concatenate([a for a, _, _ in parts]),
                                      np.concatenate([b for _, b, _ in parts]),
                                      np.concatenate([c for _, _, c in parts]), ref))
        out[p.id] = dists
        if advance:
            advance(p.n_scored)
    return out


def binned_kl(dist: BaselineDist, cand_logprobs: np.ndarray) -> np.ndarray:
    """KL(baseline ‖ candidate) per position over the baseline's top-k tokens plus one tail bin."""
    out = np.empty(cand_logprobs.shape[0])
    for s in range(0, cand_logprobs.shape[0], _ROWS):
        rows = cand_logprobs[s:s + _ROWS]
        blp = dist.top_logprobs[s:s + _ROWS].astype(np.float64)
        ids = dist.top_ids[s:s + _ROWS]
        clp = np.take_along_axis(rows, ids, axis=1).astype(np.float64)
        head = (np.exp(blp) * (blp - clp)).sum(axis=1)
        p_tail = dist.tail_mass[s:s + _ROWS]
        q_tail = _tail_mass(rows, ids)
        with np.errstate(divide="ignore", invalid="ignore"):
            tail = np.where(p_tail > 0, p_tail * (np.log(p_tail) - np.log(np.maximum(q_tail, 1e-300))), 0.0)
        out[s:s + _ROWS] = head + tail
    # Rounding can leave −1e-9 where the distributions agree; KL is never negative.
    return np.maximum(out, 0.0)


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
            lp = backend.token_logprobs(window)
            kls.append(binned_kl(dist, lp))
            same += int((lp.argmax(axis=1) == dist.top_ids[:, 0]).sum())
            nll_b -= float(dist.reference_logprob.sum())
            nll_c -= float(lp[np.arange(lp.shape[0]), np.asarray(window[1:])].astype(np.float64).sum())
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
