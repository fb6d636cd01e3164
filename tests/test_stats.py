"""Statistics checked against independent computations (scipy, brute force, simulation)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from qeval import stats


@pytest.mark.parametrize("down,up", [(0, 0), (0, 5), (3, 9), (10, 10), (1, 20), (17, 4)])
def test_mcnemar_matches_scipy_binomtest(down, up):
    expected = 1.0 if down + up == 0 else sps.binomtest(down, down + up, 0.5).pvalue
    assert stats.mcnemar_exact(down, up) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_is_symmetric_and_rejects_negative():
    assert stats.mcnemar_exact(2, 11) == stats.mcnemar_exact(11, 2)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 3)


@given(st.lists(st.floats(-30, 5), min_size=2, max_size=6))
def test_choice_kl_zero_for_identical_and_shift_invariant(scores):
    assert stats.choice_kl(scores, scores) == pytest.approx(0.0, abs=1e-12)
    shifted = [s - 3.7 for s in scores]
    assert stats.choice_kl(scores, shifted) == pytest.approx(0.0, abs=1e-9)


@given(st.lists(st.floats(-20, 5), min_size=2, max_size=6), st.data())
def test_choice_kl_matches_scipy_entropy(base, data):
    cand = data.draw(st.lists(st.floats(-20, 5), min_size=len(base), max_size=len(base)))
    p = np.exp(base - np.max(base)); p /= p.sum()
    q = np.exp(cand - np.max(cand)); q /= q.sum()
    assert stats.choice_kl(base, cand) == pytest.approx(sps.entropy(p, q), rel=1e-6, abs=1e-9)


def test_choice_kl_refuses_nan_and_length_mismatch():
    with pytest.raises(ValueError):
        stats.choice_kl([0.0, float("nan")], [0.0, 0.0])
    with pytest.raises(ValueError):
        stats.choice_kl([0.0, 1.0], [0.0, 1.0, 2.0])


def test_paired_bootstrap_identical_outcomes_give_zero_width():
    b = [1, 0, 1, 1, 0] * 10
    ci = stats.paired_bootstrap_ci(b, b, n_boot=500)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_is_deterministic_and_covers_the_truth():
    rng = np.random.default_rng(1)
    hits = 0
    trials = 200
    for t in range(trials):
        base = rng.random(150) < 0.7
        # candidate loses 10% of the baseline's correct answers: true Δ = -0.07
        cand = base & (rng.random(150) >= 0.1)
        ci = stats.paired_bootstrap_ci(base, cand, n_boot=1000, seed=t)
        hits += ci.low <= -0.07 <= ci.high
    assert 0.88 <= hits / trials <= 0.99  # nominal 95%; percentile bootstrap is a bit liberal
    a = stats.paired_bootstrap_ci([1, 0, 1], [0, 0, 1], n_boot=300, seed=5)
    b = stats.paired_bootstrap_ci([1, 0, 1], [0, 0, 1], n_boot=300, seed=5)
    assert a == b


def test_paired_interval_is_narrower_than_unpaired_for_correlated_outcomes():
    rng = np.random.default_rng(7)
    base = (rng.random(300) < 0.6).astype(float)
    cand = base.copy()
    flip = rng.choice(300, 12, replace=False)
    cand[flip] = 1 - cand[flip]
    paired = stats.paired_bootstrap_ci(base, cand, n_boot=2000)
    # Unpaired normal interval for a difference of two independent proportions:
    p1, p2 = base.mean(), cand.mean()
    se = math.sqrt(p1 * (1 - p1) / 300 + p2 * (1 - p2) / 300)
    assert (paired.high - paired.low) < 0.5 * (2 * 1.96 * se)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (37, 50), (5, 200)])
def test_wilson_matches_scipy(k, n):
    ci = stats.wilson_interval(k, n)
    ref = sps.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert ci.low == pytest.approx(ref.low, abs=1e-6)
    assert ci.high == pytest.approx(ref.high, abs=1e-6)


def test_normal_quantile_matches_scipy():
    for q in [0.001, 0.025, 0.2, 0.5, 0.8, 0.975, 0.999]:
        assert stats.normal_quantile(q) == pytest.approx(sps.norm.ppf(q), abs=1e-8)


def test_above_chance_equal_levels_matches_binomial_tail():
    correct = [True] * 70 + [False] * 130
    p = stats.above_chance_p(correct, [0.25] * 200)
    assert p == pytest.approx(sps.binom.sf(69, 200, 0.25), rel=1e-9)


def test_above_chance_mixed_levels_matches_brute_force():
    chance = [0.25, 0.2, 0.5, 0.25, 0.2, 1 / 3]
    correct = [True, False, True, True, False, True]
    observed = sum(correct)
    brute = 0.0
    for outcome in itertools.product([0, 1], repeat=len(chance)):
        if sum(outcome) >= observed:
            brute += math.prod(p if o else 1 - p for o, p in zip(outcome, chance))
    assert stats.above_chance_p(correct, chance) == pytest.approx(brute, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=5, max_size=80), st.data())
def test_bootstrap_interval_contains_estimate(base, data):
    cand = data.draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)))
    ci = stats.paired_bootstrap_ci(base, cand, n_boot=300)
    assert ci.low - 1e-12 <= ci.estimate <= ci.high + 1e-12
    assert -1 <= ci.low <= ci.high <= 1
