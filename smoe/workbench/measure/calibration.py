"""Calibration of a verdict rule by simulation: how often it resolves what is not there, and how often it finds
what is.

A simulated comparison has an entry baseline and m entries, n seeds each; every run's metric is a per-seed value
common to all entries (it cancels in the paired differences) plus independent noise of sd 1 / sqrt(2), normal or
Student t with 3 degrees of freedom (heavy tails) scaled to that sd, so every paired difference has sd 1: effects
and margins are in units of that sd. `simulate` hands the values to any rule callable (values (R, m + 1, n), row 0
the baseline -> verdicts (R, m), e.g. `Rule.decide`), so a sequential rule that looks at a prefix of the seeds can be
calibrated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from smoe.workbench.measure import power as pw
from smoe.workbench.measure.rule import Margin, Rule

Decide = Callable[[np.ndarray], np.ndarray]  # values (R, m + 1, n) -> verdicts (R, m)
DISTRIBUTIONS = ("normal", "t3")
DIRECTIONAL = ("better", "worse")
LEVEL = 100.0  # the baseline's mean metric (so a relative margin has something to be relative to)


def noise(distribution: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Independent noise of sd 1 / sqrt(2): "normal", or "t3" (Student t, 3 degrees of freedom, variance 3)."""
    if distribution == "normal":
        return rng.standard_normal(shape) / math.sqrt(2)
    if distribution == "t3":
        return rng.standard_t(3, shape) / math.sqrt(3) / math.sqrt(2)
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def simulate(decide: Decide, n: int, effects: Sequence[float], distribution: str = "normal", sims: int = 2000,
             seed: int = 0, chunk: int = 500) -> np.ndarray:
    """Verdicts (sims, m) of `decide` on `sims` comparisons of m = len(effects) entries at n seeds; entry i's true
    mean difference against the baseline is effects[i] (in sd of the paired differences, higher is better)."""
    if n < 1 or sims < 1 or not len(effects):
        raise ValueError(f"simulate needs n >= 1, sims >= 1 and at least one effect; got {n}, {sims}, {effects}")
    rng = np.random.default_rng(seed)
    shift = np.concatenate([[0.0], np.asarray(effects, dtype=float)])[None, :, None]
    out = []
    for start in range(0, sims, chunk):
        rows = min(chunk, sims - start)
        seed_values = LEVEL + rng.standard_normal((rows, 1, n))
        values = seed_values + shift + noise(distribution, (rows, shift.shape[1], n), rng)
        out.append(np.asarray(decide(values)))
    return np.concatenate(out)


def any_rate(verdicts: np.ndarray, names: Sequence[str]) -> float:
    """The share of simulated comparisons where some entry's verdict is one of `names` (a family-wise rate)."""
    return float(np.isin(verdicts, names).any(axis=1).mean())


def monte_carlo_error(rate: float, sims: int) -> float:
    """The standard error of a simulated rate."""
    return math.sqrt(max(rate * (1 - rate), 1e-12) / sims)


@dataclass(frozen=True)
class Cell:
    """One cell of the calibration table: a distribution, n seeds, m entries, the rates found."""

    distribution: str
    n: int
    m: int
    mdd: float  # the rule's reported MDD, sd units
    false_resolution: float  # at zero effect: some entry better or worse
    power: float  # entry 0 at effect = mdd, the others at zero: entry 0 better
    false_equivalence: float | None  # margin rows: every entry at effect = +margin, some entry equivalent
    false_non_inferiority: float | None  # margin rows: every entry at effect = -margin, some entry non-inferior or up


def calibrate(rule: Rule, distribution: str, n: int, m: int, sims: int = 2000, seed: int = 0) -> Cell:
    """The rates of `rule` (its margin, if any, absolute in sd units) at n seeds and m entries."""
    mdd = pw.mdd(rule.test_for(n, m), n, rule.base_level(m), rule.power)
    zero = simulate(rule.decide, n, [0.0] * m, distribution, sims, seed)
    found = simulate(rule.decide, n, [mdd] + [0.0] * (m - 1), distribution, sims, seed + 1)
    fe = fni = None
    if rule.margin is not None:
        if rule.margin.relative:
            raise ValueError("calibrate takes an absolute margin (in sd of the differences)")
        delta = rule.margin.value
        fe = any_rate(simulate(rule.decide, n, [delta] * m, distribution, sims, seed + 2), ["equivalent"])
        fni = any_rate(simulate(rule.decide, n, [-delta] * m, distribution, sims, seed + 3),
                       ["non-inferior", "equivalent", "better"])
    return Cell(distribution, n, m, mdd, any_rate(zero, DIRECTIONAL), float(np.mean(found[:, 0] == "better")), fe,
                fni)


def calibration_cells(rule: Rule, seeds: Sequence[int], entries: Sequence[int], margin: float | None,
                      sims: int = 2000, distributions: Sequence[str] = DISTRIBUTIONS) -> list[Cell]:
    """Every (distribution, m, n) cell of `rule`, with the absolute margin (sd units) when given."""
    if margin is not None:
        rule = replace(rule, margin=Margin(margin))
    return [calibrate(rule, dist, n, m, sims, seed=1000 * m + 10 * n)
            for dist in distributions for m in entries for n in seeds]
