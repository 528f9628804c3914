"""smoe.workbench.measure.stats: the two tests against hand-computed values and brute force, their intervals as the
values they do not reject, the adjustments and the levels they judge at, the probability of improvement, bootstrap
noise."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from smoe.workbench.measure.stats import (
    adjust,
    bootstrap_sd,
    dominant_noise,
    exact_floor,
    holm,
    improvement_scores,
    interval,
    probability_of_improvement,
    shift_p,
)

T_975_DF2 = 4.302652729749464  # t_{0.975, 2}


def p_of(d, c=0.0, test="t"):
    return float(shift_p(np.array([d], dtype=float), np.array([[c]]), test)[0, 0])


def brute_sign_flip(d, c):
    """Share of the 2^n sign patterns of d - c whose |sum| reaches the observed |sum| (float64, with a tie margin)."""
    x = np.asarray(d, dtype=float) - c
    sums = np.array([abs(np.dot(s, x)) for s in itertools.product((1, -1), repeat=x.size)])
    return float(np.mean(sums >= abs(x.sum()) - 1e-9 * np.abs(x).sum()))


def test_t_test_p_by_hand():
    # t = 2 / (1 / sqrt 3) = 2 sqrt 3; for df = 2 the two-sided p is 1 - t / sqrt(2 + t^2) = 1 - 2 sqrt 3 / sqrt 14.
    assert p_of([1.0, 2.0, 3.0]) == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-12)
    assert p_of([-1.0, -2.0, -3.0]) == pytest.approx(0.0741799002274486, abs=1e-12)
    assert p_of([1.0, 2.0, 3.0], c=2.0) == 1.0
    assert p_of([0.0, 1.0, 2.0], c=-1.0) == pytest.approx(0.0741799002274486, abs=1e-12)  # the same d - c


def test_zero_variance_never_goes_below_the_exact_floor():
    assert exact_floor(3) == 0.25 and exact_floor(6) == 1 / 32
    assert p_of([0.5, 0.5, 0.5]) == 0.25
    assert p_of([0.5] * 6) == 1 / 32
    assert p_of([0.5, 0.5, 0.5], c=0.5) == 1.0
    assert p_of([0.0, 0.0, 0.0]) == 1.0
    low, high = interval(np.full((2, 3), 0.5), np.array([0.05, 0.25]), "t")
    assert (low[0], high[0]) == (-math.inf, math.inf)  # 0.25 > 0.05: nothing can be rejected
    assert low[1] == pytest.approx(0.5) and high[1] == pytest.approx(0.5)


def test_sign_flip_exact_values_and_ties():
    assert p_of([1, 2, 3, 4, 5, 6], test="sign-flip") == 2 / 64
    assert p_of([1, 2, 3], test="sign-flip") == 2 / 8
    # |±1 ±1 ±2| = 4, 0, 2, 2, 2, 2, 0, 4: observed 4 -> 2/8; observed |1 - 1 + 2| = 2 -> 6/8.
    assert p_of([1, 1, 2], test="sign-flip") == 2 / 8
    assert p_of([1, -1, 2], test="sign-flip") == 6 / 8
    assert p_of([0, 0, 0], test="sign-flip") == 1.0
    # Ties that float rounding breaks: |±0.7 ±0.9 ±0.7| = 0.9 for 6 of 8 patterns, but not bit-equal.
    assert p_of([0.7, 0.9, -0.7], test="sign-flip") == 6 / 8


@settings(max_examples=40, deadline=None)
@given(hs.integers(2, 8), hs.integers(0, 10_000), hs.floats(-2, 2))
def test_sign_flip_matches_brute_force(n, seed, c):
    d = np.random.default_rng(seed).normal(0.3, 1.0, n)
    assert p_of(d, c, "sign-flip") == pytest.approx(brute_sign_flip(d, c), abs=1e-12)


def test_intervals_by_hand():
    low, high = interval(np.array([[1.0, 2.0, 3.0]]), 0.05, "t")
    assert low[0] == pytest.approx(2 - T_975_DF2 / math.sqrt(3), abs=1e-12)
    assert high[0] == pytest.approx(2 + T_975_DF2 / math.sqrt(3), abs=1e-12)
    # sign-flip at level 2/64 (K = 1): [smallest, largest] half-mean; {1} | {2..6} and {6} | {1..5}
    low, high = interval(np.array([[1.0, 2, 3, 4, 5, 6]]), 2 / 64, "sign-flip")
    assert low[0] == pytest.approx(1.0) and high[0] == pytest.approx(6.0)
    low, high = interval(np.array([[1.0, 2, 3, 4, 5, 6]]), 0.01, "sign-flip")  # below the floor 1/32
    assert (low[0], high[0]) == (-math.inf, math.inf)


@pytest.mark.parametrize("test", ["t", "sign-flip"])
@pytest.mark.parametrize("seed", range(6))
def test_the_interval_holds_the_values_the_test_does_not_reject(test, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 9))
    g = rng.normal(rng.normal(), 1.0, (1, n))
    for level in (0.2, 0.05, 0.02):
        low, high = interval(g, level, test)
        if not math.isfinite(low[0]):
            assert exact_floor(n) > level
            continue
        step = 1e-6 * (high[0] - low[0])
        c = np.array([[low[0] - step, low[0] + step, high[0] - step, high[0] + step]])
        p = shift_p(g, c, test)[0]
        assert p[0] <= level and p[3] <= level  # outside: rejected
        assert p[1] > level and p[2] > level  # inside: kept


def test_holm_and_its_levels():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    p, level = adjust(np.array([[0.01, 0.04, 0.03]]), 0.05, "holm")
    assert p[0] == pytest.approx([0.03, 0.06, 0.06])
    assert level[0] == pytest.approx([0.05 / 3, 0.025, 0.025])  # rejected at step 1; the rest at step 2's level


def test_bonferroni_bh_and_none():
    raw = np.array([[0.01, 0.04, 0.03, 0.5]])
    p, level = adjust(raw, 0.05, "bonferroni")
    assert p[0] == pytest.approx([0.04, 0.16, 0.12, 1.0]) and level[0] == pytest.approx([0.0125] * 4)
    # BH: sorted 0.01, 0.03, 0.04, 0.5 -> 4p/rank 0.04, 0.06, 0.0533, 0.5 -> running min from the top
    p, level = adjust(raw, 0.05, "bh")
    assert p[0] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert level[0] == pytest.approx([0.0125, 0.025, 0.025, 0.025])  # 1 rejected: 1 x 0.05/4; the rest 2 x 0.05/4
    p, level = adjust(raw, 0.05, "none")
    assert (p == raw).all() and (level == 0.05).all()
    with pytest.raises(ValueError, match="adjustment"):
        adjust(raw, 0.05, "sidak")


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.floats(0, 1), min_size=1, max_size=8), hs.sampled_from(["bonferroni", "holm", "bh", "none"]))
def test_rejected_exactly_when_the_raw_p_is_within_its_level(p, method):
    raw = np.array([p])
    adjusted, level = adjust(raw, 0.05, method)
    assert ((adjusted <= 0.05) == (raw <= level * (1 + 1e-9))).all()
    assert (adjusted >= raw - 1e-15).all() and (adjusted <= 1).all()
    by_raw = [a for _, a in sorted(zip(p, adjusted[0]))]
    assert all(a <= b + 1e-15 for a, b in itertools.pairwise(by_raw))


def test_probability_of_improvement():
    assert improvement_scores([1.0, -1.0, 0.0, 2.0, -math.inf, math.inf, math.nan]).tolist() == [
        1, 0, 0.5, 1, 0, 1, 0.5]
    estimate, low, high = probability_of_improvement([1.0, -1.0, 0.0, 2.0])
    assert estimate == 0.625
    assert 0 <= low <= estimate <= high <= 1
    assert probability_of_improvement([1.0, -1.0, 0.0, 2.0]) == (estimate, low, high)  # deterministic
    assert probability_of_improvement([3.0, 1.0, 2.0]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        probability_of_improvement([])


def test_bootstrap_sd_of_a_mean():
    x = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    sd = bootstrap_sd(x)
    assert sd == pytest.approx(2.0 / 20.0, rel=0.15)
    assert bootstrap_sd(x, seed=0) == sd
    assert bootstrap_sd(x, seed=1) != sd
    assert bootstrap_sd(np.full(10, 3.0)) == 0.0
    with pytest.raises(ValueError):
        bootstrap_sd([])


def test_dominant_noise():
    assert dominant_noise(eval_sd=0.01, seed_sd=0.1) == "seed"
    assert dominant_noise(eval_sd=0.2, seed_sd=0.1) == "evaluation"
