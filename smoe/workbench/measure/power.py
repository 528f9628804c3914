"""The power of the verdict rule: the minimum detectable difference and the seeds needed, for the test, the level
and the margin the rule actually applies (`workbench.measure.rule`).

Effects and margins are in units of sigma, the sd of the per-seed paired differences, assumed normal. Power means
the probability that the interval at the judged level lies on the right side: above 0 for a true difference
`effect` > 0 (the rule says better), inside (-margin, margin) for equivalence.

- "t": closed forms: the noncentral t distribution for a difference; for equivalence one integral over the sample sd
  (the interval is mean +- crit sd / sqrt(n), with the mean normal and the sd a scaled chi variable).
- "sign-flip": by simulation, POWER_DRAWS standard-normal samples of n differences (fixed seed), cached per (n, K)
  where K = floor(level 2^(n-1)) fixes the interval; the interval is shift-equivariant, so one set of draws at zero
  difference gives the power at every effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import integrate, optimize
from scipy import stats as st

from smoe.workbench.measure.stats import MAX_EXACT, SLACK, Test, exact_floor, interval

POWER = 0.8
MAX_SEEDS = 1000  # seeds_needed beyond this is reported as None
POWER_DRAWS = 2000
GRID = 4001  # points of the integral over the sample sd (t, equivalence)


@lru_cache(maxsize=256)
def _sign_flip_bounds(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (POWER_DRAWS,): the sign-flip interval with K = k of standard-normal samples of n."""
    z = np.random.default_rng(n).standard_normal((POWER_DRAWS, n))
    parts = [interval(chunk, k / 2 ** (n - 1), "sign-flip") for chunk in np.array_split(z, 8)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _k(n: int, level: float) -> int:
    return math.floor(level * SLACK * 2 ** (n - 1))


def power_difference(test: Test, n: int, level: float, effect: float) -> float:
    """P(the interval at `level` lies above 0) at n seeds when the true mean difference is `effect` sigma."""
    if test == "sign-flip":
        low = _sign_flip_bounds(n, _k(n, level))[0]
        return float(np.mean(low + effect > 0))
    crit = st.t.ppf(1 - level / 2, n - 1)
    return float(st.nct.sf(crit, n - 1, effect * math.sqrt(n)))


def power_equivalence(test: Test, n: int, level: float, effect: float, margin: float) -> float:
    """P(the interval at `level` lies inside (-margin, margin)) at n seeds, true mean difference `effect` sigma."""
    if test == "sign-flip":
        low, high = _sign_flip_bounds(n, _k(n, level))
        return float(np.mean((low + effect > -margin) & (high + effect < margin)))
    crit, root, df = st.t.ppf(1 - level / 2, n - 1), math.sqrt(n), n - 1
    s = np.linspace(0.0, root * margin / crit, GRID)  # the sample sd, sigma units; beyond the end the interval is
    inside = st.norm.cdf(root * (margin - effect) - crit * s) - st.norm.cdf(-root * (margin + effect) + crit * s)
    density = st.chi.pdf(s * math.sqrt(df), df) * math.sqrt(df)  # wider than the margins; s = chi_df / sqrt(df)
    return float(integrate.trapezoid(np.maximum(inside, 0.0) * density, s))


def mdd(test: Test, n: int, level: float, power: float = POWER) -> float:
    """The smallest true difference (sigma units) the rule resolves as better with `power` at n seeds and `level`;
    inf where the test cannot reject at that level."""
    if test == "sign-flip":
        k = _k(n, level)
        return math.inf if k == 0 else float(np.quantile(-_sign_flip_bounds(n, k)[0], power))
    crit = st.t.ppf(1 - level / 2, n - 1)

    def gap(nc: float) -> float:
        return float(st.nct.sf(crit, n - 1, nc)) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
    return optimize.brentq(gap, 0.0, hi) / math.sqrt(n)


def seeds_needed(effect: float, level: float, test_for: Callable[[int], Test], margin: float | None = None,
                 min_seeds: int = 3, power: float = POWER) -> int | None:
    """Smallest n >= min_seeds at which the rule resolves a true difference of `effect` sigma (>= 0) with `power`:
    as better, or, with a margin (sigma units) the difference lies inside, as equivalent, whichever comes first.

    test_for(n): the test the rule uses at n seeds. effect inf (zero variance): the first n whose exact floor
    reaches the level. None when no n up to MAX_SEEDS does (effect 0 without a margin, for one).
    """
    if math.isinf(effect) or (margin is not None and math.isinf(margin)):
        return next(n for n in range(min_seeds, MAX_SEEDS) if exact_floor(n) <= level * SLACK)

    def reached(n: int) -> bool:
        test = test_for(n)
        if effect > 0 and power_difference(test, n, level, effect) >= power:
            return True
        return margin is not None and effect < margin and power_equivalence(test, n, level, effect, margin) >= power

    for n in range(min_seeds, MAX_EXACT + 1):
        if reached(n):
            return n
    low, high = max(min_seeds, MAX_EXACT + 1), MAX_SEEDS  # t from here on: power grows with n
    if not reached(high):
        return None
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if reached(mid) else (mid + 1, high)
    return low
