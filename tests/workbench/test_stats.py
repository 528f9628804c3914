"""smoe.workbench.measure.stats: hand-computed intervals, p-values, Holm, verdicts, power and bootstrap noise."""

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats as st

from smoe.workbench.measure.stats import (
    bootstrap_sd,
    compare_all,
    dominant_noise,
    holm,
    mdd,
    paired,
    seeds_needed,
    sign_flip_p,
    t_test_p,
)

T_975_DF2 = 4.302652729749464  # t_{0.975, 2}


def test_t_quantile_in_closed_form():
    # For df = 2, t_p = (2p - 1) * sqrt(2 / (4 p (1 - p))).
    assert math.isclose(0.95 * math.sqrt(2 / 0.0975), T_975_DF2, abs_tol=1e-12)


def test_interval_of_d_1_2_3():
    r = paired([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], higher_is_better=True)
    assert r.n == 3
    assert r.differences == (1.0, 2.0, 3.0)
    assert r.mean == 2.0
    assert r.sd == 1.0
    assert r.ci_low == pytest.approx(2 - T_975_DF2 / math.sqrt(3), abs=1e-12)
    assert r.ci_high == pytest.approx(2 + T_975_DF2 / math.sqrt(3), abs=1e-12)


def test_t_test_p_by_hand():
    # t = 2 / (1 / sqrt 3) = 2 sqrt 3; for df = 2 the two-sided p is 1 - t / sqrt(2 + t^2) = 1 - 2 sqrt 3 / sqrt 14.
    assert t_test_p([1.0, 2.0, 3.0]) == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-12)
    assert t_test_p([1.0, 2.0, 3.0]) == pytest.approx(0.0741799002274486, abs=1e-12)
    assert t_test_p([-1.0, -2.0, -3.0]) == pytest.approx(0.0741799002274486, abs=1e-12)


def test_t_test_p_degenerate():
    assert t_test_p([0.0, 0.0, 0.0]) == 1.0
    assert t_test_p([0.5, 0.5, 0.5]) == 0.0
    assert t_test_p([3.0]) == 1.0
    assert t_test_p([]) == 1.0


def test_sign_flip_exact():
    # Only the all-positive and all-negative patterns reach |sum| 21.
    assert sign_flip_p([1, 2, 3, 4, 5, 6]) == 2 / 64
    assert sign_flip_p([1, 2, 3]) == 2 / 8


def test_sign_flip_ties():
    # |±1 ±1 ±2| = 4, 0, 2, 2, 2, 2, 0, 4: observed 4 -> 2/8; observed |1 - 1 + 2| = 2 -> 6/8.
    assert sign_flip_p([1, 1, 2]) == 2 / 8
    assert sign_flip_p([1, -1, 2]) == 6 / 8
    assert sign_flip_p([0, 0, 0]) == 1.0
    # Ties that float rounding breaks: |±0.7 ±0.9 ±0.7| = 0.9 for 6 of 8 patterns, but not bit-equal.
    assert sign_flip_p([0.7, 0.9, -0.7]) == 6 / 8


def test_sign_flip_refuses_more_than_20():
    with pytest.raises(ValueError):
        sign_flip_p(np.ones(21))


def test_which_test():
    r3 = paired([1, 2, 3], [0, 0, 0], True)
    assert (r3.test, r3.p_value, r3.p_sign_flip) == ("t", r3.p_t, 0.25)
    r5 = paired([1, 2, 3, 4, 5], [0] * 5, True)  # exact minimum 2/32 = 0.0625 > 0.05
    assert r5.test == "t"
    r6 = paired([1, 2, 3, 4, 5, 6], [0] * 6, True)
    assert (r6.test, r6.p_value, r6.p_sign_flip) == ("sign-flip", 2 / 64, 2 / 64)
    assert r6.p_t == pytest.approx(2 * st.t.sf(3.5 / (math.sqrt(3.5) / math.sqrt(6)), 5))
    assert paired([1, 2, 3, 4, 5], [0] * 5, True, alpha=0.1).test == "sign-flip"  # 0.0625 <= 0.1
    r21 = paired(np.arange(1.0, 22.0), np.zeros(21), True)
    assert (r21.test, r21.p_sign_flip) == ("t", None)


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([]) == []
    nan_kept = holm([0.01, math.nan, 0.04])  # m = 2
    assert math.isnan(nan_kept[1])
    assert [nan_kept[0], nan_kept[2]] == pytest.approx([0.02, 0.04])


@settings(max_examples=50, deadline=None)
@given(hs.lists(hs.floats(0, 1), max_size=8))
def test_holm_monotone_capped_and_not_below_raw(p):
    adjusted = holm(p)
    by_raw = [a for _, a in sorted(zip(p, adjusted))]
    assert all(a <= b for a, b in itertools.pairwise(by_raw))
    assert all(raw <= a <= 1 for raw, a in zip(p, adjusted))


def test_verdict_a_a_is_not_resolved():
    r = paired([0.3, 0.5, 0.4, 0.6, 0.2, 0.7], [0.3, 0.5, 0.4, 0.6, 0.2, 0.7], True)
    assert (r.mean, r.sd, r.p_value, r.p_t, r.verdict) == (0.0, 0.0, 1.0, 1.0, "not resolved")


def test_verdict_follows_direction():
    entry, base = [2.0, 3.1, 4.0], [1.0, 2.0, 3.1]  # d ~ [1.0, 1.1, 0.9], p_t ~ 0.003
    assert paired(entry, base, higher_is_better=False).verdict == "worse"
    assert paired(entry, base, higher_is_better=True).verdict == "better"
    assert paired(base, entry, higher_is_better=False).verdict == "better"
    assert paired(base, entry, higher_is_better=True).verdict == "worse"
    assert paired(entry, base, True).p_value < 0.01


def test_constant_nonzero_difference():
    r = paired([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], True)
    assert (r.sd, r.p_t, r.ci_low, r.ci_high, r.mdd, r.seeds_needed, r.verdict) == (0, 0, 1, 1, 0, 2, "better")


def test_single_seed_is_not_resolved():
    r = paired([5.0], [1.0], True)
    assert (r.n, r.mean, r.p_value, r.verdict, r.seeds_needed) == (1, 4.0, 1.0, "not resolved", None)
    assert all(math.isnan(x) for x in (r.sd, r.ci_low, r.ci_high, r.mdd))
    d = r.to_dict()
    assert (d["sd"], d["ci_low"], d["mdd"], d["differences"]) == (None, None, None, [4.0])
    json.dumps(d, allow_nan=False)


def test_none_and_nonfinite_pairs_are_skipped():
    r = paired([1.0, None, 3.0, math.nan, 5.0], [0.0, 0.0, math.inf, 0.0, 1.0], True)
    assert (r.n, r.differences) == (2, (1.0, 4.0))
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0], True)


def _t_power(delta, n, sd=1.0, crit=None):
    crit = st.t.ppf(0.975, n - 1) if crit is None else crit
    nc = delta * math.sqrt(n) / sd
    return st.nct.sf(crit, n - 1, nc) + st.nct.cdf(-crit, n - 1, nc)


def test_mdd_at_3_seeds():
    m = mdd(3, 1.0)
    assert m == pytest.approx(3.2640435, abs=1e-6)
    assert _t_power(m, 3, crit=T_975_DF2) == pytest.approx(0.8, abs=1e-6)
    # Independently by simulation: the t-test at n = 3, true difference m, sd 1 rejects ~80 % of the time.
    x = np.random.default_rng(0).normal(m, 1.0, size=(40_000, 3))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(3))
    assert np.mean(np.abs(t) > T_975_DF2) == pytest.approx(0.8, abs=0.01)
    assert paired([1, 2, 3], [0, 0, 0], True).mdd == m  # d = [1, 2, 3] has sd 1


def test_mdd_shrinks_with_seeds_and_scales_with_sd():
    ms = [mdd(n, 1.0) for n in range(2, 12)]
    assert all(a > b for a, b in itertools.pairwise(ms))
    assert mdd(5, 2.0) == pytest.approx(2 * mdd(5, 1.0))
    assert math.isnan(mdd(1, 1.0))
    assert math.isnan(mdd(4, math.nan))


def test_seeds_needed():
    # d / sd = 1: power 0.7480 at 9 seeds, 0.8031 at 10 (noncentral t).
    assert _t_power(1.0, 9) < 0.8 < _t_power(1.0, 10)
    assert seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(-1.0, 1.0) == 10
    assert seeds_needed(0.0, 1.0) is None
    assert seeds_needed(1.0, math.nan) is None
    assert seeds_needed(0.01, 1.0) is None  # ~78 000 seeds: over the cap
    assert paired([0, 1, 2], [0, 0, 0], True).seeds_needed == 10  # mean 1, sd 1
    assert paired([1, -1, 1, -1], [0, 0, 0, 0], True).seeds_needed is None  # mean 0


def test_compare_all_holm_changes_the_verdict():
    base = [0.0] * 6
    values = {"base": base, "a": [1, 2, 3, 4, 5, 6], "b": [2, 3, 4, 5, 6, 7], "c": [1, -1, 1, -1, 1, -1]}
    assert paired(values["a"], base, True).verdict == "better"  # alone: 2/64 < 0.05
    out = compare_all(values, "base", higher_is_better=True)
    assert list(out) == ["a", "b", "c"]
    assert (out["a"].p_value, out["b"].p_value, out["c"].p_value) == (2 / 64, 2 / 64, 1.0)
    # Holm over 3: 3 * 2/64, max(2 * 2/64, 3 * 2/64), 1.
    assert [out[k].p_adjusted for k in "abc"] == pytest.approx([6 / 64, 6 / 64, 1.0])
    assert {r.verdict for r in out.values()} == {"not resolved"}


def test_compare_all_keeps_a_strong_verdict():
    values = {"base": [1.0, 2.0, 3.0], "slow": [2.0, 3.1, 4.0]}
    out = compare_all(values, "base", higher_is_better=False)
    assert out["slow"].p_adjusted == out["slow"].p_value
    assert out["slow"].verdict == "worse"


def test_bootstrap_sd_of_a_mean():
    x = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    sd = bootstrap_sd(x)
    assert sd == pytest.approx(2.0 / 20.0, rel=0.15)
    assert bootstrap_sd(x, seed=0) == sd
    assert bootstrap_sd(x, seed=1) != sd
    assert bootstrap_sd(x, statistic=np.median, n_boot=200) > 0
    assert bootstrap_sd(np.full(10, 3.0)) == 0.0
    with pytest.raises(ValueError):
        bootstrap_sd([])


def test_dominant_noise():
    assert dominant_noise(eval_sd=0.01, seed_sd=0.1) == "seed"
    assert dominant_noise(eval_sd=0.2, seed_sd=0.1) == "evaluation"
