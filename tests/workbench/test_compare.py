"""smoe compare: entry syntax, the compressed schedule, and the whole pipeline on a tiny grid (2 entries x 2 seeds,
4 steps of a small V-MoE on digits): files, schema, every run in the table, finite numbers, skip, resume."""

import json
import math
import os
import re
import signal

import pytest

from smoe.cli import main
from smoe.workbench.grid import compare
from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.grid.executors import GridProgress
from smoe.workbench.report.comparison import summarize
from smoe.workbench.results.schema import load_results
from smoe.workbench.run.config import even_interval
from smoe.workbench.run.entry import Entry, parse_entries, parse_entry

TINY = ["model.d_model=16", "model.num_layers=2", "model.moe_every=1", "model.num_heads=2", "model.ffn_hidden=16",
        "train.batch_size=16", "train.log_every=1", "data.probe_tokens=340"]
CORRUPT = ["noise:1", "occlude:3"]


def tiny_config(out, entries="topk,expert_choice", seeds=2, **kw):
    kw = {"overrides": TINY, "corruptions": CORRUPT, **kw}
    return CompareConfig(task="digits", entries=parse_entries(entries), out=str(out), seeds=seeds, steps=4, **kw)


# ---------------------------------------------------------------- entries


def test_entry_with_router_options_overrides_and_label():
    e = parse_entry("ssr:p=0.1:cost=probs")
    assert e == Entry(label="ssr:p=0.1:cost=probs", router="ssr", options={"p": 0.1, "cost": "probs"})
    assert e.folder == "ssr-p=0.1-cost=probs"
    e = parse_entry("mom=topk+rule=momentum+rule_options.mu=0.5")
    assert (e.label, e.router, e.options, e.overrides) == ("mom", "topk", {}, ("rule=momentum", "rule_options.mu=0.5"))
    assert e.config_overrides() == ["rule=momentum", "rule_options.mu=0.5"]
    assert e.describe() == {"rule": "momentum", "rule_options.mu": "0.5"}
    e = parse_entry("s2moe:eval_k=1:k=1")  # a layer-level method: its own options, the rest its router's
    assert (e.router, e.options) == ("s2moe", {"eval_k": 1, "k": 1})
    assert e.config_overrides() == [("model.moe.method_options.eval_k", 1), ("model.moe.router_options.k", 1)]
    assert parse_entry("topk+k=1").label == "topk+k=1"
    assert parse_entry("topk:k=1").config_overrides() == [("model.moe.router_options.k", 1)]  # k: a router option


@pytest.mark.parametrize("text, match", [
    ("nope", "unknown router 'nope'; available: .*attention, deepseek"),
    ("topk:nope=1", r"unknown option\(s\) \['nope'\] for router 'topk'"),
    ("topk+rule", r"expected \+KEY=VALUE, got '\+rule'"),
    ("topk,topk", "distinct labels"),
    ("topk:k=1,topk+k=1", "distinct folders"),  # both would train in runs/topk-k=1-s<seed>
    ("", "at least one entry"),
])
def test_bad_entries_are_value_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_entries(text)


def test_steps_compress_the_preset_schedule():
    config = CompareConfig(task="lm-bbc", entries=[parse_entry("topk")], out="x", steps=30)
    # tiny: 300 steps, warm-up 30, checkpoint every 150 -> x 30 / 300 = 0.1; its 6 evaluations (every 50) kept
    assert config.schedule_overrides() == ["train.steps=30", "train.schedule_steps=30", "train.warmup_steps=3",
                                           "train.eval_every=5", "train.checkpoint_every=15"]
    run = config.run_config(parse_entry("xmoe+rule=adam"), seed=2)
    assert (run.train.steps, run.train.schedule_steps, run.train.eval_every) == (30, 30, 5)
    assert run.model["rule"] == "adam" and run.router == "xmoe" and run.seed == 2
    with pytest.raises(ValueError, match="entry 'topk\\+nope=1': --set nope"):
        config.run_config(parse_entry("topk+nope=1"), seed=0)


@pytest.mark.parametrize("steps, count, every", [(100, 6, 17), (100, 3, 34), (300, 6, 50), (4, 10, 1), (7, 2, 4)])
def test_evaluations_are_evenly_spaced_without_a_short_last_interval(steps, count, every):
    assert even_interval(steps, count) == every
    evals = [*range(every, steps, every), steps]  # the periodic ones, then the final one
    gaps = [b - a for a, b in zip([0, *evals], evals)]
    assert set(gaps[:-1]) == {every} and gaps[-1] >= every / 2  # was 33, 66, 99 and 100 for --steps 100


# ---------------------------------------------------------------- the pipeline


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_pipeline_on_a_tiny_grid_skip_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    phases = []
    monkeypatch.setattr(GridProgress, "step", lambda self, i, step: phases.append((i, step)) if isinstance(step, str)
                        else None)
    result = run_compare(tiny_config(out), command="smoe compare (test)", progress=False)
    monkeypatch.undo()
    assert result.failed == [] and result.interrupted is None
    assert phases[:3] == [(0, "loading the trained model"), (0, "analysing routing"),
                          (0, "evaluating clean and 2 corruptions")]  # the progress line names each phase of run 0
    for name in ("results.json", "report.md", "report.html", "plots/curves.png", "plots/load.png",
                 "plots/curves.pdf", "plots/routing_patches.png", "plots/routing_digit.pdf"):
        assert (out / name).is_file(), name
    assert "## Routing pictures" in (out / "report.md").read_text()
    results = load_results(out)
    assert [(r["label"], r["seed"], r["status"]) for r in results["runs"]] == [
        ("topk", 0, "done"), ("expert_choice", 0, "done"), ("topk", 1, "done"), ("expert_choice", 1, "done")]
    assert results["metric"] == {"name": "accuracy", "higher_is_better": True}
    for run in results["runs"]:
        run_dir = out / run["run_dir"]
        for name in ("config.yaml", "final.json", "routing_trace.jsonl", "analysis.json", "eval.json",
                     "routing_view.json"):
            assert (run_dir / name).is_file(), name
        # TensorBoard: one folder for the grid, each run named by its label and seed
        assert any((out / "tb" / run_dir.name).glob("events.out.tfevents.*")) and not (run_dir / "tb").exists()
        assert run["steps"] == 4 and finite(run["train_time_s"]) and finite(run["tokens_per_s"])
        assert all(finite(v) for v in run["final"].values())
        assert [c["step"] for c in run["curve"]] == [1, 2, 3, 4]  # eval every round(100 * 4 / 300) = 1 step
        layers = run["routing"]["layers"]
        assert len(layers) == 2 and all(sum(layer["load"]) == pytest.approx(1.0) for layer in layers)
        assert all(finite(layer[k]) for layer in layers for k in ("load_cv", "entropy", "effective_rank_input"))
        assert 0 <= layers[0]["specialization_nmi"]["digit"] <= 1
        assert [f["step"] for f in run["routing"]["fluctuation"]] == [2, 3, 4]
        assert len(run["routing"]["coactivation"]) == 1 and len(run["routing"]["sensitivity"]) == 2
        robust = {(e["corruption"], e["level"]): e["metric"] for e in run["robustness"]}
        assert set(robust) == {("noise", 0), ("noise", 1), ("occlude", 0), ("occlude", 3)}
        assert robust["noise", 0] == run["final"]["metric"] and all(map(finite, robust.values()))
    rows = summarize(out)
    assert sorted(row.label for row in rows) == ["expert_choice", "topk"] and all(r.finished == 2 for r in rows)
    md = (out / "report.md").read_text()
    assert "| topk" in md and "| expert_choice" in md

    # a re-run skips every finished run: nothing is trained or evaluated again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json")}
    monkeypatch.setattr(GridProgress, "step", lambda self, i, step: None if isinstance(step, str)
                        else pytest.fail("a finished run was trained again"))
    assert run_compare(tiny_config(out), progress=False).failed == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*.json")} == stamps
    # other corruptions: every run is evaluated again, nothing is trained or analysed again
    assert run_compare(tiny_config(out, corruptions=["blur:2"]), progress=False).failed == []
    changed = {p.name for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert changed == {"eval.json"}
    assert {(e["corruption"], e["level"]) for e in load_results(out)["runs"][0]["robustness"]} == {("blur", 0),
                                                                                                   ("blur", 2)}
    monkeypatch.undo()

    # another configuration in the same folder is refused
    with pytest.raises(ValueError, match="another configuration"):
        run_compare(tiny_config(out, overrides=[*TINY, "model.moe.router_options.k=1"]), progress=False)


def test_an_interrupted_grid_resumes_exactly(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_compare(tiny_config(straight, entries="topk", seeds=1, corruptions=[]), progress=False)

    out = tmp_path / "interrupted"
    calls = []

    def interrupt(self, i, step):  # SIGINT after step 3: the Trainer checkpoints and stops
        calls.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(GridProgress, "step", interrupt)
    config = tiny_config(out, entries="topk,expert_choice", seeds=1, corruptions=[])
    result = run_compare(config, progress=False)
    assert result.interrupted == signal.SIGINT and result.report is None
    results = load_results(out)
    assert [r["status"] for r in results["runs"]] == ["skipped", "skipped"]
    monkeypatch.undo()
    result = run_compare(config, progress=False)
    assert result.interrupted is None and result.failed == []
    done = {r["label"]: r for r in load_results(out)["runs"]}
    expected = load_results(straight)["runs"][0]
    assert done["topk"]["final"]["metric"] == expected["final"]["metric"]  # exact resume from step 3
    assert done["topk"]["final"]["valid_loss"] == expected["final"]["valid_loss"]
    trace = [json.loads(line)["step"] for line in (out / "runs/topk-s0/routing_trace.jsonl").read_text().splitlines()]
    assert trace == [1, 2, 3, 4]


def test_an_entry_with_an_unknown_option_trains_nothing(tmp_path, capsys):
    code = main(["compare", "--task", "digits", "--routers", "topk,s2moe:bogus=1", "--seeds", "1", "--steps", "2",
                 "--corrupt", "", "--out", str(tmp_path), "--no-progress", *(x for o in TINY for x in ("--set", o))])
    assert code == 2
    err = capsys.readouterr().err
    assert "entry 's2moe:bogus=1'" in err and "unknown option(s) ['bogus']" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_failing_entry_is_recorded_and_the_grid_goes_on(tmp_path, capsys, monkeypatch):
    real = compare.train_one

    def fails_for_bad(run, run_dir, report):
        if run_dir.name.startswith("bad"):
            raise RuntimeError("bogus failure in training")
        return real(run, run_dir, report)

    monkeypatch.setattr(compare, "train_one", fails_for_bad)
    code = main(["compare", "--task", "digits", "--routers", "topk,bad=xmoe", "--seeds", "1", "--steps", "2",
                 "--corrupt", "", "--out", str(tmp_path), "--no-progress", *(x for o in TINY for x in ("--set", o))])
    assert code == 1
    runs = {r["label"]: r for r in load_results(tmp_path)["runs"]}
    assert runs["topk"]["status"] == "done" and runs["bad"]["status"] == "failed"
    assert "bogus" in runs["bad"]["error"]
    out = capsys.readouterr()
    assert "report:" in out.out and "failed: bad s0" in out.err


def test_cli_rejects_a_bad_entry_before_training(tmp_path, capsys):
    assert main(["compare", "--task", "digits", "--routers", "topk:nope=1", "--out", str(tmp_path)]) == 2
    assert "unknown option(s) ['nope'] for router 'topk'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("corrupt, match", [
    ("bogus:1", "unknown corruption 'bogus' in 'bogus:1'; available: blur"),
    ("noise:9", r"NAME:LEVEL with LEVEL in 0..5, got 'noise:9'"),
    ("substitute:1", "corruption 'substitute:1': task digits takes blur, noise, occlude"),
])
def test_a_bad_corruption_is_refused_before_any_run_trains(tmp_path, capsys, corrupt, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(tmp_path, corruptions=["noise:1", corrupt])
    assert main(["compare", "--task", "digits", "--routers", "topk", "--corrupt", corrupt, "--out", str(tmp_path)]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_corruptions_a_text_task_cannot_apply_are_refused():
    with pytest.raises(ValueError, match="corruption 'foreign:1': task lm-bbc takes insert, substitute"):
        CompareConfig(task="lm-bbc", entries=[parse_entry("topk")], out="x", corruptions=["foreign:1"])


@pytest.mark.parametrize("label", ["x" * 101, "topk:" + ":".join(["k=1"] * 30)])
def test_a_label_too_long_for_a_folder_name_is_refused(tmp_path, capsys, label):
    with pytest.raises(ValueError, match=r"at most 100 characters .*set a shorter LABEL="):
        parse_entries(f"{label}=topk" if label.startswith("x") else label)
    parse_entries("x" * 100 + "=topk")
    routers = "x" * 300 + "=topk"
    assert main(["compare", "--task", "digits", "--routers", routers, "--out", str(tmp_path)]) == 2
    assert "at most 100 characters" in capsys.readouterr().err
