"""Paired statistics on per-item results. Pure functions: arrays in, numbers out, no model.

Why these methods:
- Δaccuracy uses Tango's score interval for a difference of paired proportions (Tango 1998). The two
  variants answer the same items, so their errors are strongly correlated; an unpaired test (as in
  lm-eval's comparison script) ignores that and can hide or invent differences. Among paired
  intervals, the score interval is chosen over the paired bootstrap because a good quantization has
  few discordant items, and there the percentile bootstrap degenerates (no flips → a zero-width
  interval, hence a GO with no evidence) and under-covers; the score interval keeps close to
  nominal coverage down to a handful of discordant pairs (Newcombe 1998; Fagerland et al. 2014),
  is deterministic, and is a closed-form function of the counts, so one-sided bounds at any level
  (non-inferiority, multiplicity corrections) cost nothing.
- Items that share a source (a passage, a case) are not independent. With clusters declared, the
  Δaccuracy interval is Rao–Scott adjusted: the counts are divided by the design effect (the
  cluster-robust variance of the per-item differences over their independent-items variance, never
  below 1); means are bootstrapped by resampling whole clusters.
- McNemar's exact test uses only the discordant pairs, which is where a quantized model differs.
- Choice-KL is KL(baseline ‖ candidate) between the softmax distributions over each item's choice
  scores: it sees answers shifting before accuracy moves, and it needs no labels.
- Top-1 agreement gets a Wilson score interval, which stays inside [0, 1] and behaves at 0 and 1.
- A high percentile of choice-KL gets a distribution-free interval from order statistics (the
  binomial law of how many items fall below the true quantile): no assumption about KL's skewed
  shape, and no upper bound at all when there are too few items to bound the tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qeval.types import Interval

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


# ---------------------------------------------------------------- paired accuracy difference


def _tango_z(up: float, down: float, n: float, delta: float) -> float:
    """Tango's score statistic for H0: p(up) - p(down) = delta (decreasing in delta)."""
    w = -up - down + (2 * n - up + down) * delta
    # Constrained MLE of p(down) under H0 (root of the likelihood's quadratic).
    p_down = (math.sqrt(max(w * w + 8 * n * down * delta * (1 - delta), 0.0)) - w) / (4 * n)
    var = n * (2 * p_down + delta * (1 - delta))
    num = up - down - n * delta
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_bound(up: float, down: float, n: float, *, alpha: float, side: str) -> float:
    """One-sided (1 - alpha) score bound for Δ = (up - down) / n, `side` "lower" or "upper".

    `up`: items only the candidate gets right; `down`: items only the baseline gets right.
    Counts may be fractional (divided by a design effect).
    """
    if n <= 0 or up < 0 or down < 0 or up + down > n + 1e-9:
        raise ValueError("tango_bound needs 0 <= up + down <= n and n > 0")
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    z = normal_quantile(1 - alpha)
    target = z if side == "lower" else -z
    if side not in ("lower", "upper"):
        raise ValueError("side must be 'lower' or 'upper'")
    lo, hi = -1.0 + 1e-12, 1.0 - 1e-12
    if _tango_z(up, down, n, lo) < target:
        return -1.0
    if _tango_z(up, down, n, hi) > target:
        return 1.0
    for _ in range(80):  # bisection to ~1e-15
        mid = (lo + hi) / 2
        if _tango_z(up, down, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired_difference_ci(up: int, down: int, n: int, *, level: float = 0.95,
                         design_effect: float = 1.0) -> Interval:
    """Two-sided score CI for candidate − baseline accuracy from the discordant counts."""
    if design_effect < 1:
        raise ValueError("design effect below 1")
    a = (1 - level) / 2
    u, d, m = up / design_effect, down / design_effect, n / design_effect
    method = "Tango score interval for paired proportions"
    if design_effect > 1:
        method += f", Rao–Scott adjusted (design effect {design_effect:.2f})"
    return Interval(estimate=(up - down) / n, low=tango_bound(u, d, m, alpha=a, side="lower"),
                    high=tango_bound(u, d, m, alpha=a, side="upper"), level=level, method=method)


def mde_paired(n: int, discordance: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy drop a paired comparison of n items detects with this power (two-sided
    alpha): (z_{1-α/2} + z_{1-β})·√(discordance / n)."""
    if n <= 0 or not 0 <= discordance <= 1:
        raise ValueError("mde_paired needs n > 0 and a discordance in [0, 1]")
    return (normal_quantile(1 - alpha / 2) + normal_quantile(power)) * math.sqrt(discordance / n)


def n_for_mde(mde: float, discordance: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Items needed for `mde_paired` to reach `mde`."""
    if mde <= 0:
        raise ValueError("the detectable drop must be positive")
    z = normal_quantile(1 - alpha / 2) + normal_quantile(power)
    return max(1, math.ceil(z * z * discordance / (mde * mde)))


# ---------------------------------------------------------------- clusters


def design_effect(values: Sequence[float], clusters: Sequence[str] | None) -> float:
    """Cluster-robust variance of the mean over the independent-items variance (at least 1)."""
    if clusters is None:
        return 1.0
    v = np.asarray(values, dtype=np.float64)
    if len(clusters) != v.size:
        raise ValueError("one cluster label per value is needed")
    n = v.size
    resid = v - v.mean()
    var_iid = float(np.sum(resid**2)) / (n * n)
    if var_iid == 0:
        return 1.0
    sums: dict[str, float] = {}
    for r, c in zip(resid, clusters):
        sums[c] = sums.get(c, 0.0) + float(r)
    k = len(sums)
    if k < 2:
        return float(n)  # one cluster: effectively one observation
    var_cl = k / (k - 1) * sum(s * s for s in sums.values()) / (n * n)
    return max(1.0, var_cl / var_iid)


# ---------------------------------------------------------------- means and quantiles


def bootstrap_means(values: Sequence[float], *, clusters: Sequence[str] | None = None,
                    n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Bootstrap distribution of the mean; with clusters, whole clusters are resampled."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("bootstrap needs a non-empty vector")
    rng = np.random.default_rng(seed)
    if clusters is None:
        return v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    labels = sorted(set(clusters))
    index = {c: i for i, c in enumerate(labels)}
    ids = np.array([index[c] for c in clusters])
    sums = np.bincount(ids, weights=v, minlength=len(labels))
    counts = np.bincount(ids, minlength=len(labels)).astype(np.float64)
    return bootstrap_ratio(sums, counts, n_boot=n_boot, seed=seed)


def bootstrap_ratio(numerators: Sequence[float], denominators: Sequence[float], *,
                    n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Bootstrap distribution of Σ numerator / Σ denominator, resampling whole units (e.g. a
    per-token mean over passages: numerator = the passage's sum, denominator = its tokens)."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError("bootstrap_ratio needs two equal, non-empty vectors")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, num.size, size=(n_boot, num.size))
    return num[pick].sum(axis=1) / den[pick].sum(axis=1)


def position_bucket_sums(kl: Sequence[float], edges: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One passage's per-token KL summed by position bucket: (Σ KL, tokens) for the buckets
    [0, e1), [e1, e2), …, [ek, ∞) of `edges` (k + 1 buckets). `kl[i]` is the KL at the token in
    position i + 1 of the passage (predicted from the i + 1 tokens before it; position 0 is never
    predicted)."""
    v = np.asarray(kl, dtype=np.float64)
    pos = np.arange(1, v.size + 1)
    idx = np.searchsorted(np.asarray(edges, dtype=np.int64), pos, side="right")
    n = len(edges) + 1
    return np.bincount(idx, weights=v, minlength=n), np.bincount(idx, minlength=n)


def ratio_se(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Standard error of Σ numerator / Σ denominator with units as clusters (linearisation)."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    k = num.size
    if k < 2:
        return float("nan")
    r = num.sum() / den.sum()
    return float(math.sqrt(k / (k - 1) * np.sum((num - r * den) ** 2)) / den.sum())


def bootstrap_mean_ci(
    values: Sequence[float], *, level: float = 0.95, n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED, clusters: Sequence[str] | None = None,
) -> Interval:
    means = bootstrap_means(values, clusters=clusters, n_boot=n_boot, seed=seed)
    alpha = 1.0 - level
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    kind = "cluster bootstrap" if clusters is not None else "bootstrap"
    return Interval(
        estimate=float(np.mean(values)), low=float(low), high=float(high), level=level,
        method=f"{kind}, {n_boot} resamples, percentile",
    )


def cluster_bootstrap_stat(values: Sequence[float], clusters: Sequence[str], stat, *,
                           n_boot: int = 2000, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Bootstrap distribution of any statistic, resampling whole clusters (for a quantile of
    clustered items, where order statistics would treat the items as independent)."""
    v = np.asarray(values, dtype=np.float64)
    groups: dict[str, list[float]] = {}
    for x, c in zip(v, clusters):
        groups.setdefault(c, []).append(float(x))
    arrays = [np.array(groups[k]) for k in sorted(groups)]
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for i in range(n_boot):
        pick = rng.integers(0, len(arrays), size=len(arrays))
        out[i] = stat(np.concatenate([arrays[j] for j in pick]))
    return out


def _binom_cdf_table(n: int, p: float) -> np.ndarray:
    """[P(Bin(n, p) <= k) for k = 0..n], from the log-pmf recursion (no underflow at large n)."""
    k = np.arange(1, n + 1, dtype=np.float64)
    step = np.log((n - k + 1) / k) + math.log(p) - math.log1p(-p)
    logpmf = np.concatenate([[n * math.log1p(-p)], n * math.log1p(-p) + np.cumsum(step)])
    pmf = np.exp(logpmf - logpmf.max())
    return np.minimum(np.cumsum(pmf / pmf.sum()), 1.0)


def quantile_bound(values: Sequence[float], q: float, *, alpha: float, side: str) -> float:
    """Distribution-free one-sided (1 - alpha) bound for the q-quantile from order statistics.

    Upper: the smallest order statistic x_(u) with P(Bin(n, q) <= u - 1) >= 1 - alpha; +inf when
    even the largest value is not enough (too few items to bound the tail). Lower: the largest
    x_(l) with P(Bin(n, q) >= l) >= 1 - alpha; -inf when none qualifies.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0 or not 0 < q < 1 or not 0 < alpha < 1:
        raise ValueError("quantile_bound needs values, 0 < q < 1 and 0 < alpha < 1")
    cdf = _binom_cdf_table(n, q)  # cdf[k] = P(Bin(n, q) <= k)
    if side == "upper":
        # smallest u in 1..n with cdf[u - 1] >= 1 - alpha
        ok = np.nonzero(cdf[:n] >= 1 - alpha - 1e-12)[0]
        return float(x[ok[0]]) if ok.size else math.inf
    if side == "lower":
        # largest l in 1..n with P(Bin >= l) = 1 - cdf[l - 1] >= 1 - alpha
        sf = 1 - cdf[:n]
        ok = np.nonzero(sf >= 1 - alpha - 1e-12)[0]
        return float(x[ok[-1]]) if ok.size else -math.inf
    raise ValueError("side must be 'lower' or 'upper'")


def quantile_ci(values: Sequence[float], q: float, *, level: float = 0.95) -> Interval:
    a = (1 - level) / 2
    return Interval(
        estimate=float(np.quantile(np.asarray(values, dtype=np.float64), q)),
        low=quantile_bound(values, q, alpha=a, side="lower"),
        high=quantile_bound(values, q, alpha=a, side="upper"), level=level,
        method="order statistics (distribution-free)",
    )


def mcnemar_exact(flips_down: int, flips_up: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (binomial, p = 1/2)."""
    if flips_down < 0 or flips_up < 0:
        raise ValueError("discordant counts must be non-negative")
    n = flips_down + flips_up
    if n == 0:
        return 1.0
    k = min(flips_down, flips_up)
    # Log-space table: math.comb(n, k) / 2**n overflows a float beyond about 1,000 flips.
    return float(min(1.0, 2.0 * _binom_cdf_table(n, 0.5)[k]))


def wilson_bound(p: float, n: float, *, alpha: float, side: str) -> float:
    """One-sided (1 - alpha) Wilson score bound for a proportion p observed on n items (n may be
    an effective sample size: n divided by a design effect)."""
    if n <= 0 or not 0 <= p <= 1:
        raise ValueError("wilson bound needs 0 <= p <= 1 and n > 0")
    z = normal_quantile(1 - alpha)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    if side == "lower":
        return max(0.0, centre - half)
    if side == "upper":
        return min(1.0, centre + half)
    raise ValueError("side must be 'lower' or 'upper'")


def wilson_interval(successes: int, n: int, *, level: float = 0.95,
                    design_effect: float = 1.0) -> Interval:
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError("wilson interval needs 0 <= successes <= n and n > 0")
    a = (1 - level) / 2
    p, m = successes / n, n / design_effect
    method = "Wilson score" + (f", effective n = n / {design_effect:.2f}" if design_effect > 1 else "")
    return Interval(estimate=p, low=wilson_bound(p, m, alpha=a, side="lower"),
                    high=wilson_bound(p, m, alpha=a, side="upper"), level=level, method=method)


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


def binom_upper_tail(successes: int, n: int, p: float) -> float:
    """P(Bin(n, p) >= successes), exact (one-sided test that a proportion exceeds p)."""
    if not 0 <= successes <= n or not 0 <= p <= 1:
        raise ValueError("binom_upper_tail needs 0 <= successes <= n and 0 <= p <= 1")
    if successes == 0 or p == 1:
        return 1.0
    if p == 0:
        return 0.0
    return float(max(0.0, 1.0 - _binom_cdf_table(n, p)[successes - 1]))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b), a, b > 0 (the Beta(a, b) distribution function)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def _beta_quantile(q: float, a: float, b: float) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(100):  # bisection: monotone, exact to double precision
        mid = (lo + hi) / 2
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(successes: float, n: int, *, level: float = 0.95) -> Interval:
    """Exact (Clopper–Pearson) interval for a binomial proportion: the Beta quantiles
    B(α/2; x, n − x + 1) and B(1 − α/2; x + 1, n − x). `successes` may be fractional (an
    expected count, e.g. ties broken at random); the same Beta quantiles then interpolate."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError("clopper_pearson needs 0 <= successes <= n and n > 0")
    a = (1 - level) / 2
    low = 0.0 if successes == 0 else _beta_quantile(a, successes, n - successes + 1)
    high = 1.0 if successes == n else _beta_quantile(1 - a, successes + 1, n - successes)
    return Interval(estimate=successes / n, low=low, high=high, level=level,
                    method="Clopper–Pearson exact binomial")


def effective_n(labels: Sequence[str]) -> float:
    """n² / Σ(cluster size²): the independent items a clustered sample is worth when items of a
    cluster are perfectly correlated (the worst case); n when every item is its own cluster."""
    if not labels:
        raise ValueError("effective_n needs at least one item")
    sizes: dict[str, int] = {}
    for c in labels:
        sizes[c] = sizes.get(c, 0) + 1
    return len(labels) ** 2 / sum(m * m for m in sizes.values())


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


# ---------------------------------------------------------------- seeds × units


def seeds_units_bootstrap(a: np.ndarray, b: np.ndarray | None = None, den: np.ndarray | None = None, *,
                          n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED,
                          level: float = 0.95) -> tuple[Interval, float]:
    """Two-level bootstrap for an experiment repeated over seeds on the same units (items or
    passages): `a[s, u]` is seed s's value on unit u (a numerator when `den[u]` is given, making
    the statistic Σ_u a / Σ_u den). Units are resampled once per replicate and shared by both
    arms (the same items: a paired design); seeds are resampled within each arm, because a seed
    of one arm has no partner in the other. Returns the interval for mean(a) − mean(b) (or
    mean(a) alone) and a two-sided bootstrap p-value for it being 0."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    d = np.ones(a.shape[1]) if den is None else np.asarray(den, dtype=np.float64)
    if a.shape[1] != d.size or a.shape[1] == 0:
        raise ValueError("seeds_units_bootstrap: every arm needs the same non-empty units")

    def stat(m, units, seeds):
        return (m[np.ix_(seeds, units)].sum(axis=1) / d[units].sum()).mean()

    def point(m):
        return float((m.sum(axis=1) / d.sum()).mean())

    estimate = point(a) - (point(np.atleast_2d(b)) if b is not None else 0.0)
    rng = np.random.default_rng(seed)
    n_units = a.shape[1]
    out = np.empty(n_boot)
    bb = None if b is None else np.atleast_2d(np.asarray(b, dtype=np.float64))
    for i in range(n_boot):
        units = rng.integers(0, n_units, size=n_units)
        value = stat(a, units, rng.integers(0, a.shape[0], size=a.shape[0]))
        if bb is not None:
            value -= stat(bb, units, rng.integers(0, bb.shape[0], size=bb.shape[0]))
        out[i] = value
    alpha = 1 - level
    low, high = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    p = float(min(1.0, 2 * min((out <= 0).mean(), (out >= 0).mean())))
    return Interval(estimate=estimate, low=float(low), high=float(high), level=level,
                    method=f"two-level bootstrap (units paired, seeds within arm), {n_boot} resamples"), p
