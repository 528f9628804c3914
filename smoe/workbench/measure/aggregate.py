"""Summaries over several tasks: rliable's aggregates (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice") and the rank test of a critical-difference diagram (Demšar 2006, "Statistical comparisons of classifiers
over multiple data sets").

- `iqm`: the interquartile mean, the mean of the middle 50 % of the scores (a quarter cut from each end, as
  `scipy.stats.trim_mean(x, 0.25)`): robust to a task or a run far off, less noisy than the median.
- `stratified_bootstrap`: an interval for a statistic of scores pooled over tasks, resampling the runs within each
  task (so every task keeps its number of runs), percentile interval.
- `probability_of_improvement`: P(X > Y) averaged over tasks, each task's the Mann-Whitney share of run pairs (x, y)
  with x > y (ties one half), with its stratified bootstrap interval.
- `friedman`: the Friedman test of k methods over N blocks (ties averaged, tie-corrected statistic) and the mean
  rank of every method; `nemenyi_cd`: the critical difference of mean ranks at which the Nemenyi post-hoc test tells
  two methods apart.

Scores are oriented so that higher is better (the caller flips a lower-is-better metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

N_BOOT = 2000


def iqm(scores: Sequence[float] | np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Interquartile mean of scores (all of them with axis None, else along axis): floor(n / 4) cut from each end."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        raise ValueError("iqm needs at least one score")
    return st.trim_mean(x, 0.25, axis=axis)


def _check_tasks(name: str, tasks: Sequence[Sequence[float]]) -> list[np.ndarray]:
    arrays = [np.asarray(t, dtype=float) for t in tasks]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError(f"{name} must hold one non-empty list of run scores per task, got {len(arrays)} tasks "
                         f"with sizes {[a.size for a in arrays]}")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError(f"{name} must hold finite scores (leave a diverged run out and say so)")
    return arrays


def stratified_bootstrap(tasks: Sequence[Sequence[float]], statistic: Callable[..., np.ndarray] = iqm,
                         level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of statistic(scores pooled over tasks, axis=1): tasks holds each task's run scores
    (n_k,); each of n_boot draws resamples the n_k runs of every task with replacement; percentile interval."""
    arrays = _check_tasks("tasks", tasks)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([a[rng.integers(0, a.size, (n_boot, a.size))] for a in arrays], axis=1)
    low, high = np.quantile(statistic(draws, axis=1), [(1 - level) / 2, (1 + level) / 2])
    return float(statistic(np.concatenate(arrays), axis=None)), float(low), float(high)


def _wins(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, m): 1 where x_i > y_j, 0.5 where equal, 0 where less."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def probability_of_improvement(x_tasks: Sequence[Sequence[float]], y_tasks: Sequence[Sequence[float]],
                               level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of P(X > Y): the mean over tasks of the share of run pairs of task k where X's run
    scores higher than Y's (ties one half); the interval resamples X's and Y's runs within every task."""
    xs, ys = _check_tasks("x_tasks", x_tasks), _check_tasks("y_tasks", y_tasks)
    if len(xs) != len(ys):
        raise ValueError(f"x_tasks and y_tasks must cover the same tasks, got {len(xs)} and {len(ys)}")
    rng = np.random.default_rng(seed)
    estimate, draws = [], []
    for x, y in zip(xs, ys):
        wins = _wins(x, y)
        estimate.append(wins.mean())
        i, j = rng.integers(0, x.size, (n_boot, x.size)), rng.integers(0, y.size, (n_boot, y.size))
        draws.append(wins[i[:, :, None], j[:, None, :]].mean(axis=(1, 2)))
    low, high = np.quantile(np.mean(draws, axis=0), [(1 - level) / 2, (1 + level) / 2])
    return float(np.mean(estimate)), float(low), float(high)


@dataclass(frozen=True)
class Friedman:
    """The Friedman test over N blocks of k methods: mean ranks (1 = best, ties averaged), the tie-corrected
    chi-square statistic with k - 1 degrees of freedom and its p; the Nemenyi critical difference at alpha."""

    mean_ranks: tuple[float, ...]
    statistic: float
    p_value: float
    blocks: int
    cd: float
    alpha: float


def friedman(scores: Sequence[Sequence[float]] | np.ndarray, alpha: float = 0.05) -> Friedman:
    """Friedman test of scores (N blocks, k methods), higher is better; needs N >= 2 and k >= 2."""
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.isfinite(x).all():
        raise ValueError(f"scores must be a finite (blocks, methods) array with at least 2 of each, got shape "
                         f"{x.shape}")
    n, k = x.shape
    ranks = st.rankdata(-x, axis=1)  # 1 = the highest score of the block
    ties = sum(float((c**3 - c).sum()) for c in (np.unique(row, return_counts=True)[1] for row in ranks))
    correction = 1 - ties / (n * k * (k * k - 1))
    rank_sums = ranks.sum(axis=0)
    chi2 = (12 / (n * k * (k + 1)) * float((rank_sums**2).sum()) - 3 * n * (k + 1))
    chi2 = chi2 / correction if correction > 0 else 0.0  # every block all tied: no evidence of a difference
    p = float(st.chi2.sf(chi2, k - 1))
    return Friedman(tuple((rank_sums / n).tolist()), chi2, p, n, nemenyi_cd(k, n, alpha), alpha)


def nemenyi_cd(k: int, blocks: int, alpha: float = 0.05) -> float:
    """The critical difference of mean ranks of the Nemenyi test, k methods over `blocks` blocks:
    q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile over sqrt(2) (Demšar 2006, Table 5)."""
    if k < 2 or blocks < 1:
        raise ValueError(f"nemenyi_cd needs k >= 2 methods and blocks >= 1, got k={k}, blocks={blocks}")
    q = st.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * blocks)))
