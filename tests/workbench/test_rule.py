"""smoe.workbench.measure.rule: the verdict rule as one (test, family, level, adjustment, margin): the degenerate cases
that must not resolve, diverged seeds, margins, and intervals that never disagree with their verdicts."""

import math

import numpy as np
import pytest
from scipy import stats as st

from smoe.workbench.measure import power as pw
from smoe.workbench.measure.rule import Margin, Pair, Rule, compare_all, comparison_outcomes, judge, paired

T_975_DF2 = 4.302652729749464  # t_{0.975, 2}


def test_two_seeds_never_resolve():
    r = paired([1, 2], [2, 3])  # the same difference twice: sd 0
    assert (r.verdict, r.p_value, r.n) == ("not resolved", 1.0, 2)
    assert (r.ci_low, r.ci_high) == (-math.inf, math.inf)
    assert "fewer than 3 paired seeds" in r.note
    assert r.to_dict()["ci_low"] is None


def test_one_test_image_better_at_each_of_three_seeds_is_not_resolved():
    base = [0.9025069637883009, 0.9108635097493036, 0.9192200557103064]  # digits: k / 359
    r = paired([b + 1 / 359 for b in base], base)
    assert r.verdict == "not resolved"
    assert r.p_value == 0.25  # the exact floor at 3 seeds, not ~0
    assert math.isnan(r.d_z) and "zero variance" in r.note


def test_round_off_variance_is_zero_variance():
    r = paired([0.1 + 6e-17, 0.1, 0.1 - 4e-17], [0.0, 0.0, 0.0])
    assert 0 < r.sd < 1e-16
    assert (r.verdict, r.p_value) == ("not resolved", 0.25)
    # at 6 seeds the floor is 1/32 < 0.05: six equal differences are the evidence of six signs
    six = paired([1.5] * 6, [1.0] * 6)
    assert (six.verdict, six.p_value) == ("better", 1 / 32)


def test_an_entry_diverged_at_two_of_three_seeds_is_not_better():
    r = paired([5.0, math.nan, math.inf], [1.0, 2.0, 3.0])
    assert r.verdict == "not resolved"
    assert r.diverged == (1, 2) and r.note.startswith("fewer than 3") and "diverged 2 of 3" in r.note
    assert r.prob_improvement == pytest.approx(1 / 3)  # the diverged seeds count as losses


def test_a_diverged_seed_rules_out_better_but_not_worse():
    base = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    good = paired([11.0, 12.1, 13.0, 13.9, math.nan, 16.0], base)  # +10 at five seeds, diverged at one
    assert good.n == 5 and good.verdict == "not resolved" and good.diverged == (4,)
    assert good.ci_low > 0  # the interval alone would say better: the diverged seed forbids it
    bad = paired([-9.0, -7.9, -7.0, -6.1, math.nan, -4.0], base)
    assert bad.verdict == "worse"
    # the baseline diverging works the other way: the entry cannot be worse
    assert paired(base, [11.0, 12.1, 13.0, 13.9, math.nan, 16.0]).verdict == "not resolved"
    # both diverged at the same seed: a tie, no side favoured
    assert paired([11.0, 12.1, 13.0, 13.9, math.nan, 16.0], [*base[:4], math.nan, base[5]]).verdict == "better"
    # a missing value (no run) is simply not paired
    assert paired([11.0, 12.1, 13.0, 13.9, None, 16.0], base).verdict == "better"


def test_six_seeds_and_four_entries_can_resolve_a_large_effect():
    rng = np.random.default_rng(3)
    base = rng.normal(100, 5, 6)
    values = {"base": base.tolist(), "big": (base + 10 + rng.normal(0, 1, 6)).tolist(),
              **{f"null{i}": (base + rng.normal(0, 1, 6)).tolist() for i in range(3)}}
    out = compare_all(values, "base", higher_is_better=True)
    assert out["big"].verdict == "better"
    assert out["big"].test == "t"  # the sign-flip test cannot reach 0.05 / 4 at 6 seeds
    assert out["big"].level == 0.05 / 4 and out["big"].family_size == 4
    assert {out[f"null{i}"].verdict for i in range(3)} == {"not resolved"}


def test_a_a_with_enough_seeds_and_a_margin_is_equivalent():
    a = np.random.default_rng(0).normal(100, 5, 8).tolist()
    rule = Rule(margin=Margin.parse("2%"))
    r = paired(a, a, rule=rule)
    assert r.verdict == "equivalent" and r.margin == pytest.approx(0.02 * abs(np.mean(a)))
    assert r.margin_spec == "2%"
    near = paired([x + 0.1 * z for x, z in zip(a, np.random.default_rng(1).normal(size=8))], a, rule=rule)
    assert near.verdict == "equivalent" and -near.margin < near.ci_low < near.ci_high < near.margin
    assert paired(a[:3], a[:3], rule=rule).verdict == "not resolved"  # 3 seeds: the floor 0.25 is too high
    assert paired(a, a).verdict == "not resolved"  # without a margin equality cannot be shown


def test_a_crippled_entry_is_worse_and_a_margin_does_not_change_it():
    a = np.random.default_rng(0).normal(100, 5, 4)
    crippled = (a + 30 + np.random.default_rng(1).normal(0, 1, 4)).tolist()  # perplexity: lower is better
    for rule in (Rule(), Rule(margin=Margin.parse("2%"))):
        assert paired(crippled, a.tolist(), higher_is_better=False, rule=rule).verdict == "worse"


def test_non_inferior_and_non_superior():
    base = [10.0, 11.0, 12.0, 13.0, 14.0]
    rule = Rule(margin=Margin(1.0))
    # d: mean 0.5, sd 0.58, interval 0.5 +- 0.72: above -1, but not clear of 0, and above +1 at its top
    d = [-0.2, 1.2, 0.1, 1.0, 0.4]
    r = paired([b + x for b, x in zip(base, d)], base, rule=rule)
    assert r.ci_low > -1 and r.ci_low < 0 < r.ci_high and r.ci_high > 1
    assert r.verdict == "non-inferior"
    assert paired([b + x for b, x in zip(base, d)], base, higher_is_better=False, rule=rule).verdict == "non-superior"


def test_interval_by_hand_at_the_judged_level():
    r = paired([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])  # d = 1, 2, 3
    assert (r.test, r.level, r.mean, r.sd) == ("t", 0.05, 2.0, 1.0)
    assert r.ci_low == pytest.approx(2 - T_975_DF2 / math.sqrt(3), abs=1e-12)
    assert r.p_value == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-12)
    two = compare_all({"a": [1.0, 2.0, 3.0], "b": [2.0, 4.0, 6.0], "c": [1.5, 2.0, 3.5]}, "a")
    crit = st.t.ppf(1 - 0.025 / 2, 2)  # Bonferroni over 2: the 97.5 % interval
    assert two["b"].level == 0.025
    assert two["b"].ci_high == pytest.approx(2 + crit / math.sqrt(3), abs=1e-12)
    assert two["b"].p_adjusted == pytest.approx(2 * r.p_value, abs=1e-12)


def test_effect_sizes_by_hand():
    r = paired([11.0, 13.0, 12.0, 15.0], [10.0, 10.0, 10.0, 10.0])  # d = 1, 3, 2, 5: mean 2.75, sd 1.708
    sd = math.sqrt(((1 - 2.75) ** 2 + (3 - 2.75) ** 2 + (2 - 2.75) ** 2 + (5 - 2.75) ** 2) / 3)
    assert r.d_z == pytest.approx(2.75 / sd)
    assert r.relative == pytest.approx(27.5)
    assert r.prob_improvement == 1.0
    lower = paired([11.0, 13.0, 12.0, 15.0], [10.0, 10.0, 10.0, 10.0], higher_is_better=False)
    assert (lower.prob_improvement, lower.d_z) == (0.0, pytest.approx(2.75 / sd))  # d_z keeps the metric's sign


def test_the_test_the_rule_uses():
    rule = Rule()
    assert [rule.test_for(n, 1) for n in (3, 5, 6, 7, 12, 13)] == ["t", "t", "t", "sign-flip", "sign-flip", "t"]
    # 4 entries: alpha / 4 = 0.0125 leaves 0.0125 x 2^(n-1) split patterns: 1.6 at n = 8, 3.2 at n = 9
    assert [rule.test_for(n, 4) for n in (6, 8, 9)] == ["t", "t", "sign-flip"]
    assert Rule(test="t").test_for(9, 1) == "t"
    assert Rule(adjustment="none").base_level(4) == 0.05


def test_mdd_and_seeds_needed_follow_the_rule():
    r = paired([1, 2, 3], [0, 0, 0])  # sd 1, t at 0.05
    assert r.mdd == pytest.approx(pw.mdd("t", 3, 0.05), abs=1e-12)
    # at 3 seeds the 80 % power point of the t-test is where the noncentral t puts 80 % beyond the critical value
    assert st.nct.sf(T_975_DF2, 2, r.mdd * math.sqrt(3)) == pytest.approx(0.8, abs=1e-6)
    four = compare_all({"a": [0, 0, 0], "b": [1, 2, 3], "c": [0, 1, 0], "d": [1, 0, 0], "e": [0, 0, 1]}, "a")
    assert four["b"].mdd == pytest.approx(pw.mdd("t", 3, 0.0125), abs=1e-12) and four["b"].mdd > r.mdd
    assert paired([0, 1, 2], [0, 0, 0], rule=Rule(test="t")).seeds_needed == 10  # d / sd = 1 (noncentral t)
    assert paired([1, -1, 1, -1], [0, 0, 0, 0]).seeds_needed is None  # mean 0, no margin


def test_verdicts_never_disagree_with_their_intervals():
    rng = np.random.default_rng(7)
    for trial in range(60):
        m, n = int(rng.integers(1, 5)), int(rng.integers(3, 11))
        base = rng.normal(10, 1, n)
        direction = [True, False, None][trial % 3]
        rule = Rule(margin=Margin(float(rng.uniform(0.1, 1.0))) if trial % 2 else None,
                    adjustment=["bonferroni", "holm", "bh", "none"][trial % 4])
        pairs = {i: Pair((base + rng.normal(rng.choice([0, 0.5, 2]), 0.5, n)).tolist(), base.tolist(), direction)
                 for i in range(m)}
        for r in judge(pairs, rule).values():
            assert (r.verdict != "not resolved") == (r.p_adjusted <= 0.05)
            low, high = (r.ci_low, r.ci_high) if direction is not False else (-r.ci_high, -r.ci_low)
            delta = r.margin or 0.0
            holds = {"better": low > 0, "higher": low > 0, "worse": high < 0, "lower": high < 0,
                     "equivalent": -delta < low and high < delta, "non-inferior": low > -delta,
                     "non-superior": high < delta}
            if r.verdict == "not resolved":
                assert low <= 0 <= high
                assert r.margin is None or not (low > -delta or high < delta)
            else:
                assert holds[r.verdict]


def test_margins_and_rules_refuse_bad_values():
    assert Margin.parse("2%") == Margin(0.02, relative=True)
    assert Margin.parse("0.5") == Margin(0.5)
    assert Margin.parse("2%").absolute(-50.0) == pytest.approx(1.0)
    for bad in ("", "-2%", "0", "abc", "2%%", "nan"):
        with pytest.raises(ValueError, match="margin"):
            Margin.parse(bad)
    for kwargs, match in [({"alpha": 1.5}, "alpha"), ({"test": "wilcoxon"}, "test"), ({"min_seeds": 2}, "min_seeds"),
                          ({"adjustment": "sidak"}, "adjustment"), ({"power": 1.0}, "power")]:
        with pytest.raises(ValueError, match=match):
            Rule(**kwargs)
    with pytest.raises(ValueError, match="one value per seed"):
        Pair([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="baseline"):
        compare_all({"a": [1.0]}, "b")


def test_outcomes_of_each_kind_of_column():
    assert [o[0] for o in comparison_outcomes(None, True)] == ["higher", "lower"]
    assert [o[0] for o in comparison_outcomes(True, False)] == ["better", "worse"]
    assert [o[0] for o in comparison_outcomes(False, True)] == [
        "better", "worse", "equivalent", "non-inferior", "non-superior"]
    up = paired([2.0, 3.1, 4.0], [1.0, 2.0, 3.1], higher_is_better=None)
    assert up.verdict == "higher"
