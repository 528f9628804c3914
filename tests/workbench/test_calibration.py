"""smoe.workbench.measure.calibration: the simulator takes any rule callable, and the rule `smoe compare` applies
holds its error rates (a few cells; the whole table is benchmarks/calibrate_verdicts.py)."""

import math

import numpy as np
import pytest

from smoe.bench.calibrate import main
from smoe.workbench.measure.calibration import any_rate, calibrate, monte_carlo_error, noise, simulate
from smoe.workbench.measure.rule import Margin, Rule


def test_noise_has_the_stated_sd():
    rng = np.random.default_rng(0)
    for distribution in ("normal", "t3"):
        d = noise(distribution, (200_000,), rng) - noise(distribution, (200_000,), rng)
        assert d.std() == pytest.approx(1.0, rel=0.03)  # a paired difference has sd 1
    with pytest.raises(ValueError, match="distribution"):
        noise("cauchy", (3,), rng)


def test_simulate_hands_the_values_to_any_rule():
    seen = []

    def says_better_when_the_mean_is_up(values):
        seen.append(values.shape)
        return np.where(values[:, 1:].mean(axis=2) > values[:, :1].mean(axis=2), "better", "not resolved")

    verdicts = simulate(says_better_when_the_mean_is_up, n=4, effects=[0.0, 10.0], sims=300, chunk=100)
    assert verdicts.shape == (300, 2) and seen == [(100, 3, 4)] * 3
    assert 0.3 < np.mean(verdicts[:, 0] == "better") < 0.7 and np.all(verdicts[:, 1] == "better")
    assert any_rate(verdicts, ["better"]) == 1.0
    assert monte_carlo_error(0.05, 1000) == pytest.approx(math.sqrt(0.05 * 0.95 / 1000))


@pytest.mark.parametrize("distribution", ["normal", "t3"])
def test_the_rule_holds_its_error_rates(distribution):
    sims = 2000
    bound = 0.05 + 3 * monte_carlo_error(0.05, sims)
    cell = calibrate(Rule(margin=Margin(1.0)), distribution, n=4, m=2, sims=sims)
    assert cell.false_resolution <= bound
    assert cell.false_equivalence <= bound and cell.false_non_inferiority <= bound
    if distribution == "normal":
        assert cell.power == pytest.approx(0.8, abs=0.05)
    else:
        assert cell.power >= 0.75  # heavy tails: the normal-theory MDD is if anything conservative
    with pytest.raises(ValueError, match="absolute margin"):
        calibrate(Rule(margin=Margin.parse("2%")), distribution, n=4, m=1, sims=10)


def test_the_benchmark_prints_its_table(capsys, tmp_path):
    assert main(["--sims", "200", "--seeds", "3,4", "--entries", "1", "--json", str(tmp_path / "cells.json")]) == 0
    out = capsys.readouterr().out
    assert "| noise | entries | n=3 | n=4 |" in out and "False resolution at zero effect" in out
    assert (tmp_path / "cells.json").is_file()
