"""Paired comparison of an entry (router) against a baseline entry over seeds.

What is paired: at one seed every entry sees the same data and the same initial weights, so for a metric the unit of
evidence is the per-seed difference d_s = metric(entry, s) - metric(baseline, s); seed-to-seed variation common to
both entries cancels. The null hypothesis is "mean difference 0".

Which test: the exact sign-flip permutation test (all 2^n sign patterns of d) when it can reach alpha at all, i.e.
2 / 2^n <= alpha (n >= 6 seeds for alpha 0.05) and n <= 20; otherwise the paired t-test. With 3 seeds the smallest
exact p is 2/8 = 0.25, so the exact test could never resolve anything there; the t-test can, at the price of assuming
roughly normal differences. Beyond 20 seeds the t-test is used too (the enumeration grows as 2^n, and the t
approximation is good by then).

What the verdict means: "better" / "worse" when the Holm-adjusted p (over the entries compared with one baseline)
is below alpha, the sign of the mean difference, read in the metric's good direction, saying which; otherwise "not
resolved" -- no evidence of a difference at these seeds, which is not evidence of equality: `mdd` gives the smallest
|difference| these seeds would detect with 80 % power, `seeds_needed` the seeds that would detect the observed one.

`bootstrap_sd` measures the evaluation noise of one run (resampling its per-window or per-image values), to set
against the seed noise (the sd over seeds); `dominant_noise` says which of the two is larger.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
from scipy import optimize
from scipy import stats as st

from smoe.workbench.numbers import is_finite

MAX_EXACT = 20  # largest n for the exact sign-flip test (2^20 sign patterns)
MAX_SEEDS = 1000  # seeds_needed beyond this is reported as None

Verdict = Literal["better", "worse", "not resolved"]


@dataclass(frozen=True)
class PairedResult:
    """One entry against the baseline on one metric; differences are entry - baseline, one per used seed."""

    n: int
    differences: tuple[float, ...]
    mean: float
    sd: float  # sample sd (ddof=1); nan for n < 2
    ci_low: float  # (1 - alpha) Student-t interval of the mean difference; nan for n < 2
    ci_high: float
    p_value: float  # two-sided p of `test`
    test: Literal["t", "sign-flip"]
    p_t: float
    p_sign_flip: float | None  # None when n > MAX_EXACT
    p_adjusted: float  # Holm over the entries of one comparison; p_value for a lone comparison
    verdict: Verdict
    mdd: float  # minimum detectable |difference| at `power` for these n and sd; nan for n < 2
    seeds_needed: int | None  # seeds to detect the observed |mean| at `power`; None if mean == 0, sd nan or > 1000

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict: nan -> None, differences as a list."""
        out: dict[str, object] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float) and math.isnan(value):
                value = None
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def t_test_p(d: Sequence[float] | np.ndarray) -> float:
    """Two-sided paired t-test p of mean(d) == 0 for differences d of shape (n,).

    1 for n < 2; for sd == 0: 1 if mean == 0, else 0 (all differences equal and non-zero).
    """
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return 1.0
    mean, sd = d.mean(), d.std(ddof=1)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(d.size))
    return float(2 * st.t.sf(abs(t), d.size - 1))


def sign_flip_p(d: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign-flip p of differences d of shape (n,), n <= MAX_EXACT.

    The share of the 2^n sign patterns whose |sum| reaches the observed |sum| (observed pattern included); sums equal
    up to 1e-9 of sum|d| (float rounding) count as ties.
    """
    d = np.asarray(d, dtype=float)
    if d.size > MAX_EXACT:
        raise ValueError(f"sign_flip_p enumerates 2^n patterns; n = {d.size} > {MAX_EXACT}")
    sums = np.zeros(1)
    for x in d:
        sums = np.concatenate((sums + x, sums - x))
    observed = abs(d.sum())
    return float(np.mean(np.abs(sums) >= observed - 1e-9 * np.abs(d).sum()))


def _t_power(nc: float | np.ndarray, df: int | np.ndarray, alpha: float) -> float | np.ndarray:
    """Power of the two-sided t-test at noncentrality nc = delta * sqrt(n) / sd, df = n - 1."""
    crit = st.t.ppf(1 - alpha / 2, df)
    return st.nct.sf(crit, df, nc) + st.nct.sf(crit, df, -nc)  # lower tail by symmetry: nct.cdf gives nan there


def mdd(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum |mean difference| the two-sided paired t-test detects with `power` at n seeds and this sd.

    Solves power(delta) = `power` on the noncentral t distribution; nan for n < 2 or sd nan.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan

    def gap(nc: float) -> float:
        return float(_t_power(nc, n - 1, alpha)) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
    return optimize.brentq(gap, 0.0, hi) * sd / math.sqrt(n)


def seeds_needed(mean: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Smallest n >= 2 at which the two-sided paired t-test detects |mean| with `power` given sd.

    None when mean == 0, sd is nan, or more than MAX_SEEDS seeds would be needed; 2 when sd == 0.
    """
    if mean == 0 or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    n = np.arange(2, MAX_SEEDS + 1)
    reached = np.flatnonzero(_t_power(abs(mean) / sd * np.sqrt(n), n - 1, alpha) >= power)
    return int(n[reached[0]]) if reached.size else None


def _verdict(mean: float, p: float, alpha: float, higher_is_better: bool) -> Verdict:
    if p >= alpha:
        return "not resolved"
    return "better" if (mean > 0) == higher_is_better else "worse"


def paired(
    entry: Sequence[float | None],
    baseline: Sequence[float | None],
    higher_is_better: bool,
    alpha: float = 0.05,
    power: float = 0.8,
) -> PairedResult:
    """Compare entry with baseline, both of shape (seeds,) and paired by position (same seed).

    Pairs where either value is None or non-finite are skipped; n counts the pairs used. p_value is the exact
    sign-flip p when 2 / 2^n <= alpha and n <= MAX_EXACT, else the paired t-test p (see the module docstring).
    """
    d = np.array([float(e) - float(b) for e, b in zip(entry, baseline, strict=True) if is_finite(e) and is_finite(b)])
    n = d.size
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n >= 2 else math.nan
    half = float(st.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n) if n >= 2 else math.nan
    p_t = t_test_p(d)
    p_sign_flip = sign_flip_p(d) if n <= MAX_EXACT else None
    exact = p_sign_flip is not None and 2 / 2**n <= alpha
    p_value = p_sign_flip if exact else p_t
    return PairedResult(
        n=n,
        differences=tuple(d.tolist()),
        mean=mean,
        sd=sd,
        ci_low=mean - half,
        ci_high=mean + half,
        p_value=p_value,
        test="sign-flip" if exact else "t",
        p_t=p_t,
        p_sign_flip=p_sign_flip,
        p_adjusted=p_value,
        verdict=_verdict(mean, p_value, alpha, higher_is_better),
        mdd=mdd(n, sd, alpha, power),
        seeds_needed=seeds_needed(mean, sd, alpha, power),
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order, monotone in the raw p and capped at 1.

    nan stays nan and is not counted among the m tests.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = order.size
    out[order] = np.minimum(np.maximum.accumulate(p[order] * (m - np.arange(m))), 1.0)
    return out.tolist()


def compare_all(
    values: Mapping[str, Sequence[float | None]],
    baseline: str,
    higher_is_better: bool,
    alpha: float = 0.05,
) -> dict[str, PairedResult]:
    """`paired` of every label except `baseline` against it (values: label -> per-seed metric, shape (seeds,)).

    p_adjusted is Holm over these entries, and the verdicts are read from it.
    """
    results = {
        label: paired(v, values[baseline], higher_is_better, alpha) for label, v in values.items() if label != baseline
    }
    adjusted = holm([r.p_value for r in results.values()])
    return {
        label: replace(r, p_adjusted=p, verdict=_verdict(r.mean, p, alpha, higher_is_better))
        for (label, r), p in zip(results.items(), adjusted)
    }


def bootstrap_sd(
    samples: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
) -> float:
    """Sd of `statistic` over n_boot resamples (with replacement) of samples, shape (m,), from ONE run.

    The evaluation noise of that run's metric (e.g. samples = per-window losses or per-image errors), to set against
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
