"""smoe compare --tune: the grid and its errors, the pick (validation only, tuning seeds disjoint from the
comparison's, failed and non-finite values never picked), resume after an interruption, the record in results.json
and the report's section; fast with a fake training (`train_run` writes final.json), and once with real tiny
digits runs (slow)."""

import json
import math
import signal

import pytest

from smoe.cli import main
from smoe.workbench.grid import compare
from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.grid.executors import GridProgress
from smoe.workbench.grid.tune import TUNE_SEED_START, parse_tune, pick, tune_runs
from smoe.workbench.report.tuning_section import tuning_blocks, validation_means
from smoe.workbench.results.schema import load_results
from smoe.workbench.run import lifecycle
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.train.trainer import TrainResult

# ---------------------------------------------------------------- the grid


def test_parse_tune_gives_the_grid_in_the_order_written():
    k = "model.moe.router_options.k"
    tuning = parse_tune(["train.lr=3e-4, 1e-3,3e-3", f"{k}=1,2"], seeds=2)
    assert tuning.params == (("train.lr", ("3e-4", "1e-3", "3e-3")), (k, ("1", "2")))
    assert tuning.points()[:3] == [{"train.lr": "3e-4", k: "1"}, {"train.lr": "3e-4", k: "2"},
                                   {"train.lr": "1e-3", k: "1"}]
    assert len(tuning.points()) == 6 and tuning.seed_list() == [TUNE_SEED_START, TUNE_SEED_START + 1]
    assert tuning.spec() == ["train.lr=3e-4,1e-3,3e-3", "model.moe.router_options.k=1,2"]


@pytest.mark.parametrize("specs, seeds, match", [
    (["train.lr"], 1, r"tune expects KEY=V1,V2,... \(e.g. train.lr=3e-4,1e-3,3e-3\), got 'train.lr'"),
    (["train.lr=1e-3"], 1, "tune needs at least two values to choose from"),
    (["train.lr=1e-3,1e-3"], 1, "tune train.lr: give distinct values"),
    (["train.lr=1e-3,3e-3", "train.lr=1e-2,3e-2"], 1, "tune must name each key once"),
    ([], 1, "tune must name at least one KEY=V1,V2,..."),
    (["train.lr=1e-3,3e-3"], 0, "tune seeds must be >= 1, got 0"),
    (["train.lr=1e-3,[1"], 1, "is not a YAML value"),
])
def test_a_bad_tune_is_a_value_error(specs, seeds, match):
    with pytest.raises(ValueError, match=match):
        parse_tune(specs, seeds)


def config(out, entries="topk,expert_choice", tune=("train.lr=1e-3,1e-2",), seeds=2, tune_seeds=1, **kw):
    return CompareConfig(task="digits", entries=parse_entries(entries), out=str(out), seeds=seeds, steps=3,
                         corruptions=[], tune=parse_tune(tune, tune_seeds), **kw)


def test_a_tuned_key_may_not_also_be_set(tmp_path):
    with pytest.raises(ValueError, match=r"tune train\.lr: train\.lr is also set to one value"):
        tune_runs(config(tmp_path, overrides=["train.lr=3e-3"]))
    with pytest.raises(ValueError, match=r"tune train\.lr: lr is also set to one value"):
        tune_runs(config(tmp_path, entries="topk,expert_choice+lr=3e-3"))
    with pytest.raises(ValueError, match=r"entry 'topk': --set model\.nope"):  # every point resolves before training
        tune_runs(config(tmp_path, tune=("model.nope=1,2",)))
    with pytest.raises(ValueError, match="seeds must be <= 1000 with tune"):
        config(tmp_path, seeds=1001)
    assert not tmp_path.joinpath("tune").exists()


def test_tuning_runs_have_their_own_folders_and_seeds(tmp_path):
    runs = tune_runs(config(tmp_path, tune_seeds=2))
    assert [(r.entry.label, r.point["train.lr"], r.seed) for r in runs[:4]] == [
        ("topk", "1e-3", 1000), ("topk", "1e-2", 1000), ("expert_choice", "1e-3", 1000),
        ("expert_choice", "1e-2", 1000)]
    assert {r.seed for r in runs} == {1000, 1001} and len(runs) == 8
    assert runs[1].run_dir == tmp_path / "tune" / "runs" / "topk-train.lr=1e-2-s1000"
    assert runs[1].run.train.lr == 1e-2 and runs[1].run.seed == 1000 and runs[1].run.train.steps == 3


# ---------------------------------------------------------------- the pick


def record(point, seed, value, status="done"):
    return {"label": "a", "values": {"lr": point}, "seed": seed, "status": status, "valid_metric": value}


POINTS = [{"lr": "1"}, {"lr": "2"}, {"lr": "3"}]


def test_pick_takes_the_best_mean_over_every_tuning_seed():
    records = [record("1", 1000, 5.0), record("1", 1001, 3.0),  # mean 4
               record("2", 1000, 3.5), record("2", 1001, 3.6),  # mean 3.55: lowest
               record("3", 1000, 1.0), record("3", 1001, math.nan)]  # the best seed, but a non-finite one: out
    assert pick(records, POINTS, [1000, 1001], higher_is_better=False) == {"lr": "2"}
    assert pick(records, POINTS, [1000, 1001], higher_is_better=True) == {"lr": "1"}
    assert pick(records, POINTS, [1000], higher_is_better=False) == {"lr": "3"}


def test_pick_leaves_out_failed_and_missing_runs_and_breaks_ties_by_order():
    records = [record("1", 1000, 2.0), record("2", 1000, 2.0), record("3", 1000, 1.0, status="failed")]
    assert pick(records, POINTS, [1000], higher_is_better=False) == {"lr": "1"}
    assert pick(records, POINTS, [1000, 1001], higher_is_better=False) is None  # seed 1001 never ran


# ---------------------------------------------------------------- a fake training


def fake_training(monkeypatch, interrupt_at=None):
    """`train_run` writes final.json in no time: validation accuracy 0.5 + lr (+ 0.01 for seed 1001), test accuracy
    0.5 - lr, so choosing on the test split would pick the other value. Returns the (seed, lr) trained."""
    trained = []

    def train_run(run, run_dir, resume, progress, hooks, tb_dir):
        trained.append((run.seed, run.train.lr))
        if (run.seed, run.train.lr) == interrupt_at:
            return TrainResult("interrupted", 1, signal=signal.SIGINT)
        valid = 0.5 + run.train.lr + 0.01 * (run.seed == 1001)
        final = {"step": run.train.steps, "valid": {"accuracy": valid}, "test": {"accuracy": 0.5 - run.train.lr}}
        (run_dir / "final.json").write_text(json.dumps(final))
        return TrainResult("done", run.train.steps, final)

    monkeypatch.setattr(lifecycle, "train_run", train_run)
    monkeypatch.setattr(compare, "evaluate_one", lambda *args, **kwargs: None)
    return trained


def test_each_entry_runs_at_its_pick_on_the_validation_split(tmp_path, monkeypatch):
    trained = fake_training(monkeypatch)
    result = run_compare(config(tmp_path, tune_seeds=2), progress=False)
    assert result.failed == [] and result.interrupted is None
    assert sorted(set(trained[:8])) == [(1000, 1e-3), (1000, 1e-2), (1001, 1e-3), (1001, 1e-2)]  # tuning first
    assert sorted(trained[8:]) == [(0, 1e-2), (0, 1e-2), (1, 1e-2), (1, 1e-2)]  # then the comparison, at the pick
    results = load_results(tmp_path)
    tuning = results["tuning"]
    assert tuning["picks"] == {"topk": {"train.lr": "1e-2"}, "expert_choice": {"train.lr": "1e-2"}}
    assert tuning["seeds"] == [1000, 1001] and tuning["split"] == "valid"
    assert not {r["seed"] for r in tuning["runs"]} & {r["seed"] for r in results["runs"]}
    assert {(r["label"], r["values"]["train.lr"], r["seed"]): r["valid_metric"] for r in tuning["runs"]}[
        "topk", "1e-3", 1001] == pytest.approx(0.511)
    assert all("test" not in json.dumps(r) for r in tuning["runs"])  # the test split is never read
    assert [r["options"] for r in results["runs"]] == [{"train.lr": "1e-2"}] * 4
    assert json.loads((tmp_path / "tune" / "tuning.json").read_text()) == tuning
    md = (tmp_path / "report.md").read_text()
    assert "## Tuning" in md and "the test split was never used to choose" in md
    assert "| topk | train.lr=1e-2 | 0.5060 | 0.5150 |" in md  # mean over seeds 1000 and 1001
    assert "tuning seed(s) (1000, 1001; the compared runs use seeds 0, 1)" in md
    assert (tmp_path / "plots" / "tuning.png").is_file()

    trained.clear()  # a rerun trains nothing
    assert run_compare(config(tmp_path, tune_seeds=2), progress=False).failed == []
    assert trained == []


def test_an_interrupted_tuning_resumes_where_it_stopped(tmp_path, monkeypatch):
    trained = fake_training(monkeypatch, interrupt_at=(1000, 1e-2))
    result = run_compare(config(tmp_path), progress=False)
    assert result.interrupted == signal.SIGINT and result.results == tmp_path / "tune" / "tuning.json"
    assert trained == [(1000, 1e-3), (1000, 1e-2)] and not (tmp_path / "results.json").exists()
    tuning = json.loads(result.results.read_text())
    assert [r["status"] for r in tuning["runs"]] == ["done", "skipped"] and tuning["picks"]["topk"] is None
    trained = fake_training(monkeypatch)
    result = run_compare(config(tmp_path), progress=False)
    assert result.interrupted is None and trained[:3] == [(1000, 1e-2), (1000, 1e-3), (1000, 1e-2)]
    assert load_results(tmp_path)["tuning"]["picks"]["topk"] == {"train.lr": "1e-2"}


def test_an_entry_whose_every_value_fails_stops_the_comparison(tmp_path, monkeypatch):
    fake_training(monkeypatch)
    fake = lifecycle.train_run

    def train_run(run, *args, **kwargs):
        if run.router == "expert_choice":
            raise RuntimeError("diverged")
        return fake(run, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "train_run", train_run)
    with pytest.raises(ValueError, match="tuning: every run of expert_choice failed or was not finite on the "
                                         "validation split"):
        run_compare(config(tmp_path), progress=False)
    tuning = json.loads((tmp_path / "tune" / "tuning.json").read_text())
    assert tuning["picks"] == {"topk": {"train.lr": "1e-2"}, "expert_choice": None}
    assert [r["error"] for r in tuning["runs"] if r["label"] == "expert_choice"] == ["RuntimeError: diverged"] * 2
    assert not (tmp_path / "runs").exists()


def test_the_report_section_is_absent_without_tuning_and_reads_gaps(tmp_path):
    assert tuning_blocks({"runs": []}, tmp_path) == []
    tuning = {"params": {"train.lr": ["1e-3", "1e-2"]}, "seeds": [1000],
              "picks": {"a": {"train.lr": "1e-3"}, "b": None},
              "metric": {"name": "perplexity", "higher_is_better": False},
              "runs": [{"label": "a", "values": {"train.lr": "1e-3"}, "seed": 1000, "status": "done",
                        "valid_metric": 300.0, "train_time_s": 90.0},
                       {"label": "b", "values": {"train.lr": "1e-3"}, "seed": 1000, "status": "done",
                        "valid_metric": math.inf, "train_time_s": 30.0}]}
    means = validation_means(tuning)
    assert means["a"] == [300.0, None] and math.isnan(means["b"][0]) and means["b"][1] is None
    blocks = tuning_blocks({"runs": [{"seed": 0}], "tuning": tuning}, tmp_path, vector=False)
    table = blocks[2]
    assert table.header == ["entry", "pick", "train.lr=1e-3", "train.lr=1e-2"]
    assert table.rows == [["a", "train.lr=1e-3", "300", "not run"], ["b", "none", "n/a", "not run"]]
    assert "lowest mean validation perplexity" in blocks[1].text and "2.0 min of training" in blocks[1].text


# ---------------------------------------------------------------- the command line and real runs


def test_compare_cli_rejects_a_bad_tune_before_training(tmp_path, capsys):
    argv = ["compare", "--task", "digits", "--routers", "topk", "--out", str(tmp_path), "--tune", "train.lr=1e-3"]
    assert main(argv) == 2
    assert "tune needs at least two values to choose from" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


TINY = ["model.d_model=16", "model.num_layers=2", "model.moe_every=1", "model.num_heads=2", "model.ffn_hidden=16",
        "train.batch_size=16", "data.probe_tokens=340"]


@pytest.mark.slow
def test_tuning_real_runs_then_a_rerun_trains_nothing(tmp_path, monkeypatch):
    tuned = config(tmp_path, entries="topk", seeds=1, overrides=TINY)
    result = run_compare(tuned, progress=False)
    assert result.failed == [] and (tmp_path / "tune/runs/topk-train.lr=1e-3-s1000/final.json").is_file()
    results = load_results(tmp_path)
    pick = results["tuning"]["picks"]["topk"]
    valid = {r["values"]["train.lr"]: r["valid_metric"] for r in results["tuning"]["runs"]}
    assert pick == {"train.lr": max(valid, key=valid.get)} and results["runs"][0]["options"] == pick
    monkeypatch.setattr(GridProgress, "step", lambda self, i, step: None if isinstance(step, str)
                        else pytest.fail("a finished run was trained again"))
    assert run_compare(tuned, progress=False).failed == []
