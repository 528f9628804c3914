"""The tests, intervals and multiplicity adjustments of a paired comparison over seeds.

What is paired: at one seed every entry sees the same data and the same initial weights, so for a metric the unit of
evidence is the per-seed difference d_s = metric(entry, s) - metric(baseline, s). Everything here takes differences
`g: (R, n)` (R independent rows, e.g. R simulated comparisons, n seeds each) and works row by row, so the verdict rule
(`workbench.measure.rule`) and its calibration by simulation (`workbench.measure.calibration`) run the same code.

Two tests of "the mean difference is c", each with the interval it inverts into (the values c it does not reject):

- "t": the paired t-test and its Student-t interval. With zero variance (all differences equal, or equal up to
  round-off) the t statistic is infinite; the p of any c other than the common value is then the floor of the exact
  sign-flip test at that n, 2 / 2^n, never below: n equal differences are the evidence of n signs, no more.
- "sign-flip": the exact sign-flip permutation test (all 2^n sign patterns of d - c). Its p and interval come from
  the means of the two halves of each of the 2^(n-1) - 1 splits of the seeds into two non-empty groups (Hartigan
  1969): c is as extreme as the observed mean under a sign pattern exactly when c does not lie between the means of
  the pattern's two halves, so p(c) = (2 / 2^n) (1 + #{splits whose two means enclose c}), and the interval at level
  gamma is [K-th smallest lower mean, K-th largest upper mean] with K = floor(gamma 2^(n-1)).

`adjust` applies Bonferroni, Holm or Benjamini-Hochberg to a family of p-values and returns, for each, the level it
was judged at (its interval is drawn at that level, so an interval and its verdict never disagree).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Literal

import numpy as np
from scipy import stats as st

Test = Literal["t", "sign-flip"]
Adjustment = Literal["bonferroni", "holm", "bh", "none"]
TESTS: tuple[Test, ...] = ("t", "sign-flip")
ADJUSTMENTS: tuple[Adjustment, ...] = ("bonferroni", "holm", "bh", "none")
MAX_EXACT = 12  # largest n for the sign-flip test (2^11 - 1 splits); the t distribution is close to it beyond
TIE = 1e-9  # values this close (relative to the largest |difference| of the row) count as equal
SLACK = 1 + 1e-9  # p <= level * SLACK counts as p <= level (levels such as alpha / m are rounded floats)


def exact_floor(n: int) -> float:
    """The smallest two-sided p the exact sign-flip test reaches at n seeds: 2 / 2^n."""
    return 2.0 / 2.0**n


@cache
def _splits(n: int) -> np.ndarray:
    """(S, n) membership (1.0 / 0.0) of the first half of every split of n seeds into two non-empty halves; seed 0 is
    always in the first half, S = 2^(n-1) - 1."""
    if not 2 <= n <= MAX_EXACT:
        raise ValueError(f"the sign-flip test takes 2 to {MAX_EXACT} seeds, got {n}")
    codes = np.arange(2 ** (n - 1) - 1)  # bit i - 1 set: seed i joins seed 0; all bits set would leave no second half
    members = (codes[:, None] >> np.arange(n - 1)) & 1
    return np.hstack([np.ones((codes.size, 1)), members]).astype(float)


def _half_means(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) of the two half-means of every split, each (R, S)."""
    a = _splits(g.shape[1])
    size = a.sum(1)
    sums = g @ a.T
    first, second = sums / size, (g.sum(axis=1, keepdims=True) - sums) / (g.shape[1] - size)
    return np.minimum(first, second), np.maximum(first, second)


def _tie(g: np.ndarray) -> np.ndarray:
    """(R, 1) tolerance within which two values of a row count as equal."""
    return TIE * np.maximum(np.abs(g).max(axis=1, keepdims=True), np.finfo(float).tiny)


def _moments(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, 1) mean, sd (ddof 1) and standard error of each row."""
    n = g.shape[1]
    mean = g.mean(axis=1, keepdims=True)
    sd = g.std(axis=1, ddof=1, keepdims=True)
    return mean, sd, sd / math.sqrt(n)


def shift_p(g: np.ndarray, c: np.ndarray, test: Test) -> np.ndarray:
    """Two-sided p of "mean difference = c" for rows g: (R, n), n >= 2, at values c: (R, T) -> (R, T)."""
    g, c = np.asarray(g, dtype=float), np.asarray(c, dtype=float)
    n, tie = g.shape[1], _tie(g)
    if test == "sign-flip":
        lo, hi = _half_means(g)
        tie = tie[:, :, None]
        inside = (lo[:, :, None] - tie <= c[:, None, :]) & (c[:, None, :] <= hi[:, :, None] + tie)
        return exact_floor(n) * (1 + inside.sum(axis=1))
    mean, sd, se = _moments(g)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * st.t.sf(np.abs(mean - c) / se, n - 1)
    return np.where(sd > 0, p, np.where(np.abs(mean - c) <= tie, 1.0, exact_floor(n)))


def interval(g: np.ndarray, level: np.ndarray | float, test: Test) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (R,): the values c that `test` does not reject at `level` (two-sided), rows g: (R, n).

    Unbounded (-inf, inf) where the test cannot reject anything at that level (the sign-flip test below its floor, a
    zero-variance row below the floor)."""
    g = np.asarray(g, dtype=float)
    level = np.broadcast_to(np.asarray(level, dtype=float), (g.shape[0],))
    n, tie = g.shape[1], _tie(g)[:, 0]
    if test == "sign-flip":
        lo, hi = _half_means(g)
        count = lo.shape[1]
        k = np.minimum(np.floor(level * SLACK * 2 ** (n - 1)).astype(int), count)
        low, high = np.full(g.shape[0], -np.inf), np.full(g.shape[0], np.inf)
        for kk in np.unique(k[k > 0]):
            rows = k == kk
            low[rows] = np.partition(lo[rows], kk - 1, axis=1)[:, kk - 1] - tie[rows]
            high[rows] = np.partition(hi[rows], count - kk, axis=1)[:, count - kk] + tie[rows]
        return low, high
    mean, sd, se = (x[:, 0] for x in _moments(g))
    half = np.where(sd > 0, st.t.ppf(1 - level / 2, n - 1) * se, np.where(exact_floor(n) <= level * SLACK, tie, np.inf))
    return mean - half, mean + half


def adjust(p: np.ndarray, alpha: float, method: Adjustment) -> tuple[np.ndarray, np.ndarray]:
    """Adjusted p-values and the level each hypothesis was judged at, for a family p: (R, m) -> two (R, m) arrays.

    A hypothesis is rejected when its adjusted p <= alpha, which is when its raw p <= its level:
    none: alpha; bonferroni: alpha / m; holm (step-down): alpha / (m - i) for the i-th smallest rejected p (i from 0),
    alpha / (m - r) for the others (r rejected); bh (Benjamini-Hochberg step-up, false discovery rate): r alpha / m
    for the r rejected, (r + 1) alpha / m for the others. The raw p of a hypothesis that is not rejected lies above
    its level, so an interval drawn at that level keeps the null value inside it."""
    p = np.atleast_2d(np.asarray(p, dtype=float))
    m = p.shape[1]
    if method not in ADJUSTMENTS:
        raise ValueError(f"adjustment must be one of {ADJUSTMENTS}, got {method!r}")
    if method == "none" or m == 0:
        return p.copy(), np.full(p.shape, alpha)
    if method == "bonferroni":
        return np.minimum(1.0, m * p), np.full(p.shape, alpha / m)
    order = np.argsort(p, axis=1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=1)
    rank = np.arange(m)
    if method == "holm":
        adjusted = np.minimum(1.0, np.maximum.accumulate(ranked * (m - rank), axis=1))
    else:
        adjusted = np.minimum(1.0, np.minimum.accumulate((ranked * m / (rank + 1))[:, ::-1], axis=1)[:, ::-1])
    rejected = adjusted <= alpha * SLACK
    r = rejected.sum(axis=1, keepdims=True)
    if method == "holm":
        level = np.where(rejected, alpha / (m - rank), alpha / np.maximum(m - r, 1))
    else:
        level = np.where(rejected, r * alpha / m, np.minimum(r + 1, m) * alpha / m)
    out_p, out_level = np.empty_like(p), np.empty_like(p)
    np.put_along_axis(out_p, order, adjusted, axis=1)
    np.put_along_axis(out_level, order, level, axis=1)
    return out_p, out_level


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values of one family, in input order (`adjust` with method "holm")."""
    return adjust(np.asarray([p_values], dtype=float).reshape(1, -1), 0.05, "holm")[0][0].tolist()


def improvement_scores(g: Sequence[float]) -> np.ndarray:
    """Per seed: 1 where the entry is better (g > 0, in the good direction; +inf: the baseline diverged), 0 where it
    is worse (-inf: the entry diverged), 0.5 for a tie (equal up to round-off, or both diverged: nan)."""
    g = np.asarray(g, dtype=float)
    finite = g[np.isfinite(g)]
    tie = TIE * (np.abs(finite).max() if finite.size else 0.0)
    return np.where(np.isnan(g), 0.5, np.where(g > tie, 1.0, np.where(g < -tie, 0.0, 0.5)))


def probability_of_improvement(g: Sequence[float], level: float = 0.95, n_boot: int = 2000,
                               seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): the share of paired seeds where the entry is better (ties count one half; rliable's
    probability of improvement on paired runs), with a percentile bootstrap interval over seeds; g: (n,), n >= 1."""
    scores = improvement_scores(g)
    if scores.size == 0:
        raise ValueError("probability_of_improvement needs at least one paired seed")
    draws = scores[np.random.default_rng(seed).integers(0, scores.size, (n_boot, scores.size))].mean(axis=1)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(scores.mean()), float(low), float(high)


def bootstrap_sd(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
) -> float:
    """Sd of `statistic` over n_boot resamples (with replacement) of samples, shape (m,), from ONE run.

    The evaluation noise of that run's metric (e.g. samples = per-document losses or per-image errors), to set against
    the seed noise (the sd of the metric over seeds). Deterministic for a given seed.
    """
    x = np.asarray(samples, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_sd needs a non-empty 1-D sample, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    values = [statistic(x[rng.integers(0, x.size, x.size)]) for _ in range(n_boot)]
    return float(np.std(values, ddof=1))


def dominant_noise(eval_sd: float, seed_sd: float) -> Literal["seed", "evaluation"]:
    """Which noise dominates a metric: "evaluation" when eval_sd > seed_sd, else "seed"."""
    return "evaluation" if eval_sd > seed_sd else "seed"
