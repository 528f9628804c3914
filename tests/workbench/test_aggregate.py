"""smoe.workbench.measure.aggregate against hand-computed values and scipy: IQM, the stratified bootstrap, rliable's
probability of improvement, the Friedman test with ties and the Nemenyi critical difference."""

import math

import numpy as np
import pytest
from scipy import stats as st

from smoe.workbench.measure.aggregate import (
    friedman,
    iqm,
    nemenyi_cd,
    probability_of_improvement,
    stratified_bootstrap,
)


def test_iqm_cuts_a_quarter_from_each_end():
    # 8 values: 2 cut from each end, the mean of 3, 4, 5, 6
    assert iqm([1.0, 100.0, 3.0, 4.0, 5.0, 6.0, -50.0, 2.0]) == pytest.approx((2 + 3 + 4 + 5) / 4)
    # 6 values: floor(1.5) = 1 cut from each end
    assert iqm([0.0, 1.0, 1.0, 2.0, 5.0, 5.0]) == pytest.approx((1 + 1 + 2 + 5) / 4)
    with pytest.raises(ValueError, match="at least one score"):
        iqm([])


def test_stratified_bootstrap_keeps_each_task_and_brackets_the_estimate():
    tasks = [[1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0]]
    estimate, low, high = stratified_bootstrap(tasks, seed=1)
    assert estimate == pytest.approx(iqm([1, 2, 3, 10, 11, 12, 13]))
    assert low <= estimate <= high
    # every draw keeps 3 runs of the first task and 4 of the second: the pooled mean stays between the task means
    assert stratified_bootstrap(tasks, np.mean, seed=1) == stratified_bootstrap(tasks, np.mean, seed=1)
    assert stratified_bootstrap([[2.0, 2.0], [5.0]], np.mean)[1:] == (pytest.approx(3.0), pytest.approx(3.0))
    with pytest.raises(ValueError, match="finite scores"):
        stratified_bootstrap([[1.0, math.nan]])
    with pytest.raises(ValueError, match="one non-empty list"):
        stratified_bootstrap([[1.0], []])


def test_probability_of_improvement_counts_run_pairs_per_task():
    # task A: x = 3 runs, y = 3 runs: pairs x > y: 3 + 2 + 1 = 6 of 9; task B: 1 + 2 + (2 + one tie) = 5.5 of 9
    x = [[-99.0, -108.0, -119.0], [0.53, 0.63, 0.70]]
    y = [[-100.0, -110.0, -120.0], [0.50, 0.60, 0.70]]
    estimate, low, high = probability_of_improvement(x, y)
    assert estimate == pytest.approx((6 / 9 + 5.5 / 9) / 2)
    assert 0 <= low <= estimate <= high <= 1
    assert probability_of_improvement([[1.0]], [[1.0]]) == (0.5, 0.5, 0.5)  # a tie counts one half
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement(x, y[:1])


def test_friedman_with_ties_by_hand_and_against_scipy():
    # 6 blocks x 3 methods; the last block ties the first two methods
    scores = [[-100, -99, -105], [-110, -108, -112], [-120, -119, -126], [0.5, 0.53, 0.44], [0.6, 0.63, 0.57],
              [0.7, 0.7, 0.64]]
    result = friedman(scores)
    assert result.mean_ranks == pytest.approx((11.5 / 6, 6.5 / 6, 3.0))
    # chi2 = 12 / (N k (k + 1)) sum R^2 - 3 N (k + 1) = 498.5 / 6 - 72, tie-corrected by 1 - 6 / (N k (k^2 - 1))
    assert result.statistic == pytest.approx((498.5 / 6 - 72) / (1 - 6 / 144))
    reference = st.friedmanchisquare(*np.array(scores).T)
    assert (result.statistic, result.p_value) == (pytest.approx(reference.statistic), pytest.approx(reference.pvalue))
    assert result.blocks == 6 and result.cd == pytest.approx(nemenyi_cd(3, 6))
    assert friedman([[1.0, 1.0], [2.0, 2.0]]).p_value == 1.0  # every block tied: no evidence
    with pytest.raises(ValueError, match="at least 2 of each"):
        friedman([[1.0, 2.0]])


def test_nemenyi_critical_difference_matches_demsar_table():
    # Demšar (2006) Table 5(a): q_0.05 = 1.960, 2.343, 2.569, 2.728 for k = 2..5
    for k, q in ((2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728)):
        assert nemenyi_cd(k, 10) == pytest.approx(q * math.sqrt(k * (k + 1) / 60), abs=2e-3)
    with pytest.raises(ValueError, match="k >= 2"):
        nemenyi_cd(1, 5)
