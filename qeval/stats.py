"""Paired statistics on per-item results. Pure functions: arrays in, numbers out, no model.

Why these methods:
- Δaccuracy uses a paired bootstrap over items (resampling items, keeping each item's baseline and
  candidate outcome together). The two variants answer the same items, so their errors are strongly
  correlated; an unpaired test (as in lm-eval's comparison script) overstates the uncertainty by
  ignoring that and can hide or invent differences.
- McNemar's exact test uses only the discordant pairs, which is where a quantized model differs.
- Choice-KL is KL(baseline ‖ candidate) between the softmax distributions over each item's choice
  scores: it sees answers shifting before accuracy moves, and it needs no labels.
- Top-1 agreement gets a Wilson score interval, which stays inside [0, 1] and behaves at 0 and 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .types import Interval

DEFAULT_BOOTSTRAP = 10_000
DEFAULT_SEED = 20261122


def log_softmax(scores: Sequence[float]) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"non-finite choice score in {list(scores)}")
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


def choice_kl(base_scores: Sequence[float], cand_scores: Sequence[float]) -> float:
    """KL(P_base ‖ P_cand) in nats between the softmaxes of two choice-score vectors."""
    if len(base_scores) != len(cand_scores):
        raise ValueError("baseline and candidate score a different number of choices")
    lp = log_softmax(base_scores)
    lq = log_softmax(cand_scores)
    kl = float(np.sum(np.exp(lp) * (lp - lq)))
    return max(kl, 0.0)  # rounding can give -1e-17 for identical vectors


def paired_bootstrap_ci(
    base: Sequence[float],
    cand: Sequence[float],
    *,
    level: float = 0.95,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Percentile CI for mean(cand) - mean(base), resampling items with their pairs intact."""
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if b.shape != c.shape or b.ndim != 1 or b.size == 0:
        raise ValueError("paired bootstrap needs two non-empty vectors of equal length")
    # Resampling the per-item differences keeps each item's pair together.
    ci = bootstrap_mean_ci(c - b, level=level, n_boot=n_boot, seed=seed)
    return ci.model_copy(update={"method": f"paired bootstrap, {n_boot} resamples, percentile"})


def bootstrap_mean_ci(
    values: Sequence[float], *, level: float = 0.95, n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
) -> Interval:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("bootstrap needs a non-empty vector")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = 1.0 - level
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(
        estimate=float(v.mean()), low=float(low), high=float(high), level=level,
        method=f"bootstrap, {n_boot} resamples, percentile",
    )


def _binom_pmf(k: int, n: int) -> float:
    return math.comb(n, k) / 2.0**n


def mcnemar_exact(flips_down: int, flips_up: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (binomial, p = 1/2)."""
    if flips_down < 0 or flips_up < 0:
        raise ValueError("discordant counts must be non-negative")
    n = flips_down + flips_up
    if n == 0:
        return 1.0
    k = min(flips_down, flips_up)
    tail = sum(_binom_pmf(i, n) for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def wilson_interval(successes: int, n: int, *, level: float = 0.95) -> Interval:
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError("wilson interval needs 0 <= successes <= n and n > 0")
    z = normal_quantile(1 - (1 - level) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(
        estimate=p, low=max(0.0, centre - half), high=min(1.0, centre + half), level=level,
        method="Wilson score",
    )


def above_chance_p(correct: Sequence[bool], chance: Sequence[float]) -> float:
    """One-sided exact p that accuracy exceeds guessing, items with their own chance level.

    The number correct under guessing is Poisson-binomial(chance_i); this is P(X >= observed),
    computed exactly by dynamic programming over items.
    """
    if len(correct) != len(chance) or not correct:
        raise ValueError("above_chance_p needs one chance level per item")
    dist = np.zeros(len(chance) + 1)
    dist[0] = 1.0
    for i, p in enumerate(chance):
        dist[1 : i + 2] = dist[1 : i + 2] * (1 - p) + dist[0 : i + 1] * p
        dist[0] *= 1 - p
    observed = int(sum(bool(c) for c in correct))
    return float(min(1.0, dist[observed:].sum()))


def normal_quantile(q: float) -> float:
    """Standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0 < q < 1:
        raise ValueError("quantile must lie in (0, 1)")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if q < lo:
        r = math.sqrt(-2 * math.log(q))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / (
            (((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    if q > 1 - lo:
        return -normal_quantile(1 - q)
    r = q - 0.5
    s = r * r
    return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r / (
        ((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1)
