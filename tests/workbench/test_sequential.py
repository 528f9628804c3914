"""The group-sequential rule (`measure.sequential`) and the loop that adds seeds (`grid.sequential`), the loop run
on a fake grid whose runs are synthetic numbers (no training)."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from smoe.cli import main
from smoe.workbench.grid import sequential as loop
from smoe.workbench.grid.compare import CompareConfig, CompareResult
from smoe.workbench.measure.sequential import (
    Design,
    boundaries,
    judge_look,
    read_interval,
    simulate,
    spent,
)
from smoe.workbench.report.verdict_section import sequential_blocks, verdict_table
from smoe.workbench.results.record import write_results
from smoe.workbench.results.schema import load_results
from smoe.workbench.run.entry import parse_entries

# ---------------------------------------------------------------- the rule


def test_spending_functions_spend_alpha_by_the_end():
    for spending in ("obf", "pocock", "hsd:-2", "hsd:0"):
        assert spent(1.0, 0.05, spending) == pytest.approx(0.05)
        assert spent(0.0, 0.05, spending) == 0.0
        assert 0 < spent(0.3, 0.05, spending) < spent(0.7, 0.05, spending) < 0.05
    # O'Brien-Fleming type at t = 1/4: 2 - 2 Phi(1.95996 / 0.5)
    assert spent(0.25, 0.05, "obf") == pytest.approx(2 - 2 * st.norm.cdf(st.norm.ppf(0.975) / 0.5))
    assert spent(0.5, 0.05, "hsd:0") == pytest.approx(0.025)  # gamma 0: linear
    with pytest.raises(ValueError, match="spending must be"):
        spent(0.5, 0.05, "hsd:x")


def test_design_looks_and_the_first_boundary_is_the_exact_t_quantile():
    design = Design(max_seeds=10)
    assert design.looks() == (3, 5, 7, 9, 10)
    bounds = design.bounds()
    assert bounds[0] == pytest.approx(st.t.ppf(1 - spent(0.3, 0.05, design.spending) / 2, 2))
    assert all(a > b for a, b in itertools.pairwise(bounds))  # ever less to spend per look
    assert bounds[-1] > st.t.ppf(0.975, 9)  # the last look costs more than a fixed-n test at 10 seeds
    assert Design(max_seeds=3).looks() == (3,) and Design(max_seeds=3).bounds()[0] == pytest.approx(
        st.t.ppf(0.975, 2))  # one look: the fixed-n t-test
    with pytest.raises(ValueError, match="max_seeds must be >= 3"):
        Design(max_seeds=2)
    with pytest.raises(ValueError, match="n must be a look"):
        design.look_of(4)


def test_boundaries_spend_the_level_look_by_look():
    """On fresh draws (another seed), the crossings per look match the spending function's increments."""
    looks, alpha = (3, 5, 7), 0.1
    bounds = boundaries(looks, alpha, "pocock", draws=100_000, seed=5)
    z = np.random.default_rng(123).standard_normal((100_000, 7))
    alive, crossed = np.ones(len(z), dtype=bool), []
    for n, c in zip(looks, bounds):
        x = z[:, :n]
        t = np.abs(x.mean(1)) / (x.std(1, ddof=1) / math.sqrt(n))
        crossed.append(np.mean(alive & (t > c)))
        alive &= t <= c
    budget = [spent(n / 7, alpha, "pocock") for n in looks]
    increments = np.diff([0.0, *budget])
    assert np.allclose(crossed, increments, atol=0.004)


def test_a_a_does_not_resolve_beyond_alpha_and_large_effects_stop_early():
    design = Design(max_seeds=10, entries=1)
    verdicts, used = simulate(design, 0.0, 20_000)
    false = np.mean(verdicts != "not resolved")
    assert false <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 20_000)
    assert np.all((used == 10) | (verdicts != "not resolved"))  # only the errors stop early
    heavy, _ = simulate(design, 0.0, 20_000, distribution="t3", seed=2)
    assert np.mean(heavy != "not resolved") <= 0.06  # heavy tails: about the level (recorded in docs/metrics.md)
    crippled, used = simulate(design, -40.0, 2000)  # 40 sd of the differences worse
    assert np.all(crippled == "worse") and np.all(used == 3)


def test_read_interval_by_hand():
    assert read_interval(0.1, 2.0, True, None, final=False) == "better"
    assert read_interval(0.1, 2.0, False, None, final=False) == "worse"  # lower is better: the entry is higher
    assert read_interval(-1.0, 2.0, True, None, final=True) == "not resolved"
    assert read_interval(-0.5, 0.5, True, 1.0, final=False) == "equivalent"
    assert read_interval(-0.5, 1.5, True, 1.0, final=False) == "not resolved"  # goes on
    assert read_interval(-0.5, 1.5, True, 1.0, final=True) == "non-inferior"
    assert read_interval(-1.5, 0.5, True, 1.0, final=True) == "non-superior"


def test_judge_look_reads_the_repeated_interval():
    design = Design(max_seeds=7)
    d = [1.0, 2.0, 3.0]  # mean 2, sd 1
    look = judge_look(design, d)
    c = design.bounds()[0]
    assert (look.ci_low, look.ci_high) == pytest.approx((2 - c / math.sqrt(3), 2 + c / math.sqrt(3)))
    assert look.t == pytest.approx(2 * math.sqrt(3)) and look.stop is None and look.verdict == "not resolved"
    last = judge_look(design, [1.0, -2.0, 3.0, 0.0, 1.0, -2.0, 3.0])  # mean 4 / 7, sd 2.07: undecided
    assert last.stop == "max seeds"
    assert judge_look(design, [1.0, math.nan, 3.0]).stop == "diverged"
    assert judge_look(design, [2.0, 2.0, 2.0], scale=100.0).stop == "zero variance"
    assert judge_look(design, [50.0, 51.0, 49.0]).verdict == "better"
    assert judge_look(design, [50.0, 51.0, 49.0], higher_is_better=False).verdict == "worse"
    assert judge_look(design, [0.01, -0.01, 0.0], margin=10.0).stop == "decided"  # equivalent


# ---------------------------------------------------------------- the loop, on a fake grid


class FakeGrid:
    """Stands in for `run_compare`: every (entry, seed) of the plan gets a finished record whose metric is a seed
    effect shared by all entries + the entry's effect + noise (lower is better, like perplexity); counts the runs
    it was asked to add."""

    def __init__(self, effects, noise=1.0, seconds=10.0):
        self.effects, self.noise, self.seconds = effects, noise, seconds
        self.trained: list[tuple[str, int]] = []

    def metric(self, label, seed):
        rng = np.random.default_rng([seed, sum(map(ord, label))])
        return 100.0 + 5 * np.random.default_rng(seed).standard_normal() + self.effects[label] + (
            self.noise * rng.standard_normal())

    def __call__(self, config: CompareConfig, command="", progress=True, grid=None, report=True):
        records = []
        for seed in range(config.seeds):
            for entry in config.entries:
                if seed < config.seeds_of(entry.label):
                    folder = Path(config.out, "runs", f"{entry.folder}-s{seed}")  # a run folder: trained once
                    if not folder.exists():
                        folder.mkdir(parents=True)
                        self.trained.append((entry.label, seed))
                    records.append({"router": entry.router, "label": entry.label, "seed": seed, "options": {},
                                    "run_dir": f"runs/{entry.label}-s{seed}", "status": "done", "error": None,
                                    "train_time_s": self.seconds, "final": {"metric": self.metric(entry.label, seed)}})
        path = write_results(config.out, config.task, config.preset, "cpu", [e.label for e in config.entries],
                             config.baseline, records, command)
        return CompareResult(path, None, [], None)


@pytest.fixture
def fake(monkeypatch):
    def install(effects, **kw):
        grid = FakeGrid(effects, **kw)
        monkeypatch.setattr(loop, "run_compare", grid)
        monkeypatch.setattr(loop, "write_report", lambda out: type("Files", (), {"html": f"{out}/report.html"}))
        return grid
    return install


def config(out, entries="topk,crippled=topk+train.lr=1e-6,same=topk+train.beta1=0.9", margin=None):
    return CompareConfig(task="lm-bbc", entries=parse_entries(entries), out=str(out), seeds=10, margin=margin)


def test_a_crippled_entry_resolves_worse_in_the_first_batch_and_a_null_one_runs_to_the_end(tmp_path, fake):
    grid = fake({"topk": 0.0, "crippled": 300.0, "same": 0.0})
    loop.run_sequential(config(tmp_path), loop.SequentialConfig(max_seeds=7), progress=False)
    results = load_results(tmp_path)
    seq = results["sequential"]["entries"]
    assert seq["crippled"]["seeds"] == 3 and seq["crippled"]["stop"] == "decided"
    assert seq["crippled"]["verdict"] == "worse" and len(seq["crippled"]["looks"]) == 1
    assert seq["same"]["verdict"] == "not resolved" and seq["same"]["stop"] == "max seeds"
    assert [look["n"] for look in seq["same"]["looks"]] == [3, 5, 7]
    assert not any(label == "crippled" and seed >= 3 for label, seed in grid.trained)  # no seeds wasted on it
    assert {seed for label, seed in grid.trained if label == "topk"} == set(range(7))
    headline = results["comparisons"]["final.metric"]
    assert headline["crippled"]["verdict"] == "worse" and headline["crippled"]["test"] == "group-sequential"
    assert headline["crippled"]["n"] == 3 and headline["crippled"]["p_adjusted"] is None
    assert headline["crippled"]["ci_low"] == seq["crippled"]["ci_low"]
    assert verdict_table(results, "final.metric").rows[0][-1] == "n/a"  # no fixed-n seeds needed
    text, table = sequential_blocks(results)
    assert "repeated confidence intervals" in text.text and table.rows[0][:5] == ["crippled", "3", "3",
                                                                                  "decided", "worse"]


def test_a_rerun_replays_the_looks_from_the_folder_and_trains_nothing(tmp_path, fake):
    first = fake({"topk": 0.0, "crippled": 300.0, "same": 0.0})
    loop.run_sequential(config(tmp_path), loop.SequentialConfig(max_seeds=5), progress=False)
    before = load_results(tmp_path)["sequential"]
    again = fake({"topk": 0.0, "crippled": 300.0, "same": 0.0})
    loop.run_sequential(config(tmp_path), loop.SequentialConfig(max_seeds=5), progress=False)
    assert first.trained and not again.trained
    after = load_results(tmp_path)["sequential"]
    assert after["entries"] == before["entries"]
    # more seeds allowed later: the sequence continues where it stopped (a new design: max 7)
    more = fake({"topk": 0.0, "crippled": 300.0, "same": 0.0})
    loop.run_sequential(config(tmp_path), loop.SequentialConfig(max_seeds=7), progress=False)
    assert sorted(more.trained) == [("same", 5), ("same", 6), ("topk", 5), ("topk", 6)]


def test_the_budget_stops_the_open_entries_at_their_last_look(tmp_path, fake):
    grid = fake({"topk": 0.0, "crippled": 300.0, "same": 0.0}, seconds=10.0)
    # the first look: 9 runs, 90 s; the next would add 4 (topk and same at seeds 3-4): 130 s > 100 s
    loop.run_sequential(config(tmp_path), loop.SequentialConfig(max_seeds=7, budget_s=100.0), progress=False)
    seq = load_results(tmp_path)["sequential"]
    assert seq["entries"]["same"]["stop"] == "budget" and seq["entries"]["same"]["seeds"] == 3
    assert seq["entries"]["crippled"]["stop"] == "decided" and seq["spent_s"] == 90.0
    assert len(grid.trained) == 9


def test_a_margin_lets_an_equal_entry_stop_as_equivalent(tmp_path, fake):
    fake({"topk": 0.0, "crippled": 300.0, "same": 0.0}, noise=0.05)
    loop.run_sequential(config(tmp_path, margin="2%"), loop.SequentialConfig(max_seeds=9), progress=False)
    same = load_results(tmp_path)["sequential"]["entries"]["same"]
    assert same["verdict"] == "equivalent" and same["stop"] == "decided"
    assert same["ci_low"] > -2.0 and same["ci_high"] < 2.0  # inside 2 % of a baseline near 100


def test_budget_and_cli_arguments(tmp_path, capsys):
    assert loop.parse_budget("2h") == 7200 and loop.parse_budget("90m") == 5400 and loop.parse_budget("30") == 30
    with pytest.raises(ValueError, match="budget must be"):
        loop.parse_budget("soon")
    args = ["compare", "--task", "digits", "--routers", "topk,xmoe", "--out", str(tmp_path)]
    assert main([*args, "--max-seeds", "5"]) == 2
    assert "go with --seeds auto" in capsys.readouterr().err
    assert main([*args, "--seeds", "many"]) == 2
    assert "--seeds must be a positive int or 'auto'" in capsys.readouterr().err
    assert main([*args, "--seeds", "auto", "--max-seeds", "2"]) == 2
    assert "max_seeds must be >= 3" in capsys.readouterr().err
    assert json.dumps(loop.section(Design(3), loop.SequentialConfig(3), None, {}, 0.0))  # JSON-ready


def test_a_plan_runs_each_entry_at_its_own_seeds(tmp_path):
    from smoe.workbench.grid.compare import grid_runs

    plan = CompareConfig(task="digits", entries=parse_entries("topk,xmoe,deepseek"), out=str(tmp_path), seeds=5,
                         entry_seeds={"xmoe": 3})
    assert [(g.entry.label, g.seed) for g in grid_runs(plan) if g.seed >= 2] == [
        ("topk", 2), ("xmoe", 2), ("deepseek", 2), ("topk", 3), ("deepseek", 3), ("topk", 4), ("deepseek", 4)]
    with pytest.raises(ValueError, match="entry_seeds must name entries"):
        CompareConfig(task="digits", entries=parse_entries("topk"), out=str(tmp_path), entry_seeds={"x": 1})
    with pytest.raises(ValueError, match=r"entry_seeds\['topk'\] must be <= 3"):
        CompareConfig(task="digits", entries=parse_entries("topk"), out=str(tmp_path), entry_seeds={"topk": 4})


def test_the_family_wise_error_of_three_entries_sharing_a_baseline_stays_under_alpha():
    from smoe.workbench.measure.sequential import simulate_family

    design = Design(max_seeds=9, entries=3)
    verdicts, used = simulate_family(design, [0.0, 0.0, 0.0], 6000, seed=4)
    assert np.mean((verdicts != "not resolved").any(axis=1)) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 6000)
    verdicts, used = simulate_family(design, [-30.0, 0.0, 0.0], 4000, seed=5)
    assert np.all(verdicts[:, 0] == "worse")
    # it stops at 3 seeds when |t| of 3 normal differences of mean 30 sd passes the first boundary: noncentral t
    first = st.nct.sf(design.bounds()[0], 2, 30 * math.sqrt(3))
    assert first > 0.9 and np.mean(used[:, 0] == 3) == pytest.approx(first, abs=0.02)
