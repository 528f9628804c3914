"""Seeds until the answer is known: a group-sequential rule on the paired t statistic with alpha spending.

A sequential comparison looks at each entry's per-seed paired differences d = entry - baseline (in the metric's good
direction) after the first `first` seeds and then after every `batch` more, up to `max_seeds`: the looks n_1 < ... <
n_K are fixed before any run (`Design.looks`). At look k the entry's repeated confidence interval (RCI) is

    mean(d) +- c_k sd(d) / sqrt(n_k)

and the entry stops as soon as that interval decides: `better` (above 0), `worse` (below 0) or, with a margin
delta, `equivalent` (inside (-delta, delta)). Where it does not, it gets the next batch of seeds; at its last look
(max_seeds, or where the budget ran out) the interval is read once more, and may also say `non-inferior` (above
-delta) or `non-superior` (below +delta); else `not resolved`.

The boundaries c_1 .. c_K make the RCIs hold simultaneously: P(the true mean lies in every RCI) >= 1 - alpha / m
for each of the m entries (Bonferroni over the family, so all its verdicts together are wrong with probability <=
alpha), whatever the true mean, because (mean - mu) / (sd / sqrt(n)) has the same joint distribution over looks
for every mu and every sd of normal differences. The level is spent over the looks as the Lan-DeMets O'Brien-Fleming
type function alpha(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)) at the information fraction t = n_k / max_seeds
(little at the first looks, so an early stop needs a large effect, and the last boundary is close to the fixed-n
one), or the Pocock type alpha log(1 + (e - 1) t). c_1 is the exact Student-t quantile; c_2 .. c_K are found by
simulation of normal paths (`BOUNDARY_DRAWS`, a fixed seed), once per design, and cached.

A look needs at least 3 seeds; differences whose sd is round-off (`ROUND_OFF` of the metric's size) give no
verdict (stop reason "zero variance"); a non-finite difference (a diverged or failed run) stops the entry
("diverged") without a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as st

from smoe._validate import check_choice, check_float, check_int

SPENDING_DEFAULT = "hsd:-2"
BOUNDARY_DRAWS = 400_000
MIN_SEEDS = 3
ROUND_OFF = 1e-6
DECIDING = ("better", "worse", "equivalent")  # verdicts that stop an entry before its last look


def spent(t: float, alpha: float, spending: str = SPENDING_DEFAULT) -> float:
    """Cumulative level spent by information fraction t in [0, 1] (alpha at t = 1)."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if spending == "obf":
        return float(2 - 2 * st.norm.cdf(st.norm.ppf(1 - alpha / 2) / math.sqrt(t)))
    if spending == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    gamma = hsd_gamma(spending)
    return alpha * t if gamma == 0 else alpha * (1 - math.exp(-gamma * t)) / (1 - math.exp(-gamma))


def hsd_gamma(spending: str) -> float:
    """The gamma of a Hwang-Shih-DeCani spending function "hsd:<gamma>"; ValueError for anything else."""
    name, _, value = spending.partition(":")
    try:
        gamma = float(value) if name == "hsd" else math.nan
    except ValueError:
        gamma = math.nan
    if not math.isfinite(gamma):
        raise ValueError(f"spending must be 'obf', 'pocock' or 'hsd:<gamma>' (e.g. hsd:-2), got {spending!r}")
    return gamma


@lru_cache(maxsize=64)
def boundaries(looks: tuple[int, ...], alpha: float, spending: str = SPENDING_DEFAULT, draws: int = BOUNDARY_DRAWS,
               seed: int = 0) -> tuple[float, ...]:
    """Critical |t| per look: P(|T_j| <= c_j for j < k, |T_k| > c_k) = spent(t_k) - spent(t_{k-1}) under normal
    paired differences of mean 0 (T_k: the t statistic of the first looks[k] differences); inf where a look has
    nothing to spend."""
    n_max = looks[-1]
    budget = [spent(n / n_max, alpha, spending) for n in looks]
    out = [float(st.t.ppf(1 - budget[0] / 2, looks[0] - 1))]
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((draws, n_max))
    sums, squares = np.cumsum(z, axis=1), np.cumsum(z * z, axis=1)
    stats = []
    for n in looks:
        mean = sums[:, n - 1] / n
        sd = np.sqrt(np.maximum(squares[:, n - 1] - n * mean * mean, 0.0) / (n - 1))
        stats.append(np.abs(mean) / (sd / math.sqrt(n)))
    alive = stats[0] <= out[0]
    for k in range(1, len(looks)):
        want = (budget[k] - budget[k - 1]) * draws  # crossings this look may have
        candidates = np.sort(stats[k][alive])[::-1]
        c = math.inf if want < 1 or candidates.size == 0 else float(candidates[min(int(want), candidates.size) - 1])
        out.append(c)
        alive &= stats[k] <= c
    return tuple(out)


@dataclass(frozen=True)
class Design:
    """The looks and the level of a sequential comparison of `entries` entries against one baseline."""

    max_seeds: int
    first: int = 3
    batch: int = 2
    alpha: float = 0.05
    entries: int = 1
    spending: str = SPENDING_DEFAULT

    def __post_init__(self):
        check_int("first", self.first, low=MIN_SEEDS)
        check_int("max_seeds", self.max_seeds, low=self.first)
        check_int("batch", self.batch, low=1)
        check_int("entries", self.entries, low=1)
        check_float("alpha", self.alpha, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.spending not in ("obf", "pocock"):
            hsd_gamma(self.spending)

    def looks(self) -> tuple[int, ...]:
        """Seeds at each look: first, first + batch, ..., max_seeds."""
        return (*range(self.first, self.max_seeds, self.batch), self.max_seeds)

    def bounds(self) -> tuple[float, ...]:
        """The critical |t| of each look for one entry (level alpha / entries)."""
        return boundaries(self.looks(), self.alpha / self.entries, self.spending)

    def look_of(self, n: int) -> int:
        """The index of the look at n seeds."""
        looks = self.looks()
        if n not in looks:
            raise ValueError(f"n must be a look of this design ({', '.join(map(str, looks))}), got {n}")
        return looks.index(n)


@dataclass(frozen=True)
class Look:
    """One entry at one look: its differences' mean, sd, the boundary and the RCI (in the metric's units, entry -
    baseline) and what it says; `stop` is the reason the entry stops here, None when it goes on."""

    n: int
    mean: float
    sd: float
    t: float
    bound: float
    ci_low: float
    ci_high: float
    verdict: str
    stop: str | None

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


def judge_look(design: Design, differences: Sequence[float], higher_is_better: bool = True,
               margin: float | None = None, scale: float = 1.0, last: bool = False) -> Look:
    """The look at n = len(differences) seeds (a look of `design`) of one entry: differences entry - baseline per
    seed; margin: delta in the metric's units (None: no equivalence verdicts); scale: the metric's size, for the
    round-off test; last: no look follows (max seeds or the budget), so a weaker verdict is read and it stops."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    k = design.look_of(n)
    last = last or k == len(design.looks()) - 1
    c = design.bounds()[k]
    if not np.all(np.isfinite(d)):
        return Look(n, math.nan, math.nan, math.nan, c, -math.inf, math.inf, "not resolved", "diverged")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd <= ROUND_OFF * max(scale, abs(mean)):
        return Look(n, mean, sd, math.nan, c, -math.inf, math.inf, "not resolved", "zero variance")
    half = c * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = read_interval(low, high, higher_is_better, margin, final=last)
    stop = "decided" if verdict in DECIDING else ("max seeds" if k == len(design.looks()) - 1 else
                                                  "budget" if last else None)
    return Look(n, mean, sd, mean / (sd / math.sqrt(n)), c, low, high, verdict, stop)


def read_interval(low: float, high: float, higher_is_better: bool, margin: float | None, final: bool) -> str:
    """The verdict an interval [low, high] of entry - baseline says (see the module docstring)."""
    good_low, good_high = (low, high) if higher_is_better else (-high, -low)
    if good_low > 0:
        return "better"
    if good_high < 0:
        return "worse"
    if margin is not None:
        if -margin < good_low and good_high < margin:
            return "equivalent"
        if final and good_low > -margin:
            return "non-inferior"
        if final and good_high < margin:
            return "non-superior"
    return "not resolved"


def run_design(design: Design, d: np.ndarray, margin: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts (R,), seeds used (R,)) of the design on R sequences of paired differences d: (R, max_seeds), in the
    good direction (higher is better), margin in their units: each row stops at its first deciding look."""
    rows = d.shape[0]
    verdicts = np.full(rows, "not resolved", dtype=object)
    used = np.full(rows, design.max_seeds)
    open_ = np.ones(rows, dtype=bool)
    looks = design.looks()
    for k, (n, c) in enumerate(zip(looks, design.bounds())):
        x = d[:, :n]
        mean, half = x.mean(axis=1), c * x.std(axis=1, ddof=1) / math.sqrt(n)
        final = k == len(looks) - 1
        said = np.array([read_interval(lo, hi, True, margin, final) for lo, hi in zip(mean - half, mean + half)],
                        dtype=object)
        stop = open_ & (np.isin(said, DECIDING) | final)
        verdicts[stop], used[stop] = said[stop], n
        open_ &= ~stop
    return verdicts, used


def decide(design: Design, values: np.ndarray, margin: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts (R, m), seeds used (R, m)) for R simulated comparisons values: (R, m + 1, max_seeds), row 0 of each
    the baseline, higher is better: each entry judged by the design on its differences from the baseline (the shape
    `benchmarks/calibrate_verdicts.py`'s simulator hands a rule)."""
    out = [run_design(design, values[:, i] - values[:, 0], margin) for i in range(1, values.shape[1])]
    return np.stack([v for v, _ in out], axis=1), np.stack([u for _, u in out], axis=1)


def noise(distribution: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard noise of sd 1: "normal", or "t3" (Student t with 3 degrees of freedom scaled to sd 1)."""
    check_choice("distribution", distribution, ("normal", "t3"))
    return rng.standard_normal(shape) if distribution == "normal" else rng.standard_t(3, shape) / math.sqrt(3)


def simulate(design: Design, effect: float, sims: int, margin: float | None = None, distribution: str = "normal",
             seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts (sims,), seeds used (sims,)) of one entry whose paired differences have mean `effect` and sd 1,
    higher is better."""
    d = effect + noise(distribution, (sims, design.max_seeds), np.random.default_rng(seed))
    return run_design(design, d, margin)


def simulate_family(design: Design, effects: Sequence[float], sims: int, margin: float | None = None,
                    distribution: str = "normal", seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(verdicts (sims, m), seeds used (sims, m)) of m = len(effects) entries against one baseline: each run's
    metric is a seed value common to all entries + the entry's effect + noise of sd 1 / sqrt(2), so each paired
    difference has sd 1 and two entries' differences share the baseline's noise (correlation 1/2)."""
    rng = np.random.default_rng(seed)
    shift = np.concatenate([[0.0], np.asarray(effects, dtype=float)])[None, :, None]
    shape = (sims, len(effects) + 1, design.max_seeds)
    values = rng.standard_normal((sims, 1, design.max_seeds)) + shift + noise(distribution, shape, rng) / math.sqrt(2)
    return decide(design, values, margin)
