"""smoe claims: every registered claim names a runnable comparison (entries parse, task, preset, labels and column
exist), the verdict mapping, claims judged on hand-made results, the summary files, the listing, the CLI's errors,
and one claim run end to end on a tiny setting."""

import json
import signal
from pathlib import Path

import pytest

from smoe.cli import main
from smoe.workbench.claims import run as claims_run
from smoe.workbench.claims.claim import CLAIMS, COMPARISONS, Claim, Comparison, judge_claims
from smoe.workbench.claims.run import plan, select, write_summary
from smoe.workbench.grid.compare import CompareResult
from smoe.workbench.grid.tune import tune_runs
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.tasks import get_task

# ---------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", CLAIMS.names())
def test_every_claim_names_a_runnable_comparison(name):
    claim = CLAIMS.get(name)
    comparison = COMPARISONS.get(claim.comparison)
    assert comparison.preset in get_task(comparison.task).presets
    labels = [e.label for e in parse_entries(comparison.entries)]
    assert {claim.entry, claim.reference, comparison.baseline} <= set(labels)
    assert comparison.has_column(claim.column) and (claim.against is None or comparison.has_column(claim.against))
    config = comparison.config("unused")
    for entry in config.entries:  # every entry's run configuration resolves (no data is loaded)
        config.run_config(entry, seed=0)
    if config.tune is not None:  # and at every tuned value
        assert len(tune_runs(config)) == len(config.entries) * len(config.tune.points())


def test_the_language_model_comparisons_tune_the_learning_rate_per_entry():
    tuned = {name for name in COMPARISONS.names() if COMPARISONS.get(name).tune}
    assert tuned == {name for name in COMPARISONS.names() if COMPARISONS.get(name).task == "lm-bbc"}
    xmoe = COMPARISONS.get("xmoe")
    assert xmoe.config("out").tune.params == (("train.lr", ("1e-3", "3e-3", "1e-2")),)
    assert xmoe.command("out").endswith(" --tune train.lr=1e-3,3e-3,1e-2 --out out")
    assert COMPARISONS.get("vae").config("out").tune is None
    with pytest.raises(ValueError, match="tune needs at least two values"):
        Comparison("c", "lm-bbc", "topk,xmoe", "topk", tune=("train.lr=1e-3",))


def test_every_comparison_is_read_by_a_claim():
    assert {CLAIMS.get(n).comparison for n in CLAIMS.names()} == set(COMPARISONS.names())


def test_a_comparison_knows_its_corruption_columns():
    assert COMPARISONS.get("xmoe").robust_columns() == ["robust.substitute@5", "robust.insert@5"]
    assert COMPARISONS.get("vmoe-bpr").robust_columns() == ["robust.capacity-bpr@5", "robust.capacity-vanilla@5"]
    assert COMPARISONS.get("xmoe").has_column("routing.nmi.topic")
    assert not COMPARISONS.get("xmoe").has_column("load_cv")  # routing scalars carry their prefix


@pytest.mark.parametrize("kwargs, match", [
    ({"column": "robust.noise@5"}, "column 'robust.noise@5' is not a compared column of comparison 'xmoe'"),
    ({"entry": "ssr"}, r"entry must be one of \['topk', 'xmoe'\], got 'ssr'"),
    ({"baseline": "nope"}, "baseline must be one of"),
    ({"direction": "up"}, "direction must be one of"),
    ({"direction": "lower"}, r"direction must be one of \['better', 'worse'\], got 'lower'"),  # perplexity
    ({"column": "routing.entropy"}, r"direction must be one of \['higher', 'lower'\], got 'better'"),
    ({"column": "routing.nope"}, "column 'routing.nope' is not a compared column"),
    ({"column": "final.experts_per_token"}, "is not a compared column"),
    ({"entry": "topk"}, "entry and baseline are both 'topk'"),
    ({"comparison": "nope"}, "unknown comparison 'nope'"),
    ({"kind": "non-inferiority"}, "a non-inferiority claim takes a margin, got None"),
    ({"margin": "2%"}, "a superiority claim takes no margin"),
    ({"kind": "equivalence", "margin": "2%"}, r"direction must be one of \['equal'\]"),
    ({"kind": "non-inferiority", "margin": "-1"}, "margin must be a positive number"),
    ({"kind": "non-inferiority", "margin": "2%", "column": "routing.entropy", "direction": "lower"},
     "needs a column with a good direction"),
    ({"kind": "causal"}, "kind must be one of"),
])
def test_a_bad_claim_is_a_value_error(kwargs, match):
    fields = {"name": "c", "paper": "p", "statement": "s", "comparison": "xmoe", "column": "final.metric",
              "entry": "xmoe", "direction": "better", **kwargs}
    with pytest.raises(ValueError, match=match):
        Claim(**fields)


def test_a_bad_comparison_is_a_value_error():
    with pytest.raises(ValueError, match=r"baseline must be one of its entries \['topk', 'xmoe'\], got 'ssr'"):
        Comparison("c", "lm-bbc", "topk,xmoe", "ssr")
    with pytest.raises(ValueError, match="preset must be one of"):
        Comparison("c", "lm-bbc", "topk,xmoe", "topk", preset="huge")
    with pytest.raises(ValueError, match="unknown router 'nope'"):
        Comparison("c", "lm-bbc", "topk,nope", "topk")


def test_a_preset_applies_where_the_task_has_it():
    configs, notes = plan(select(["vmoe-bpr", "vae-unsupervised"]), "out", preset="medium")
    assert {name: c.preset for name, c in configs.items()} == {"vmoe-bpr": "medium", "vae": "tiny"}
    assert notes == ["task sketch-vae has no preset 'medium'; comparison vae runs at its own (tiny)"]
    assert str(configs["vae"].out) == "out/vae" and configs["vmoe-bpr"].capacities == [0.1, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="preset 'mediun' is not a preset of any task of these claims"):
        plan(select(["vae-unsupervised"]), "out", preset="mediun")


def test_overrides_follow_the_comparisons_own():
    configs, _ = plan(select(["vmoe-bpr"]), "out", seeds=1, steps=20, overrides=["train.lr=1e-3"])
    config = configs["vmoe-bpr"]
    assert (config.seeds, config.steps) == (1, 20)
    assert config.overrides == ["model.moe.capacity_factor=1.05", "train.lr=1e-3"]
    assert "--seeds 1 --steps 20 --set model.moe.capacity_factor=1.05 --set train.lr=1e-3 " in COMPARISONS.get(
        "vmoe-bpr").command("out", 1, 20, overrides=["train.lr=1e-3"])
    with pytest.raises(ValueError, match="entry 'vmoe'"):  # a key the task lacks fails before anything runs
        plan(select(["vmoe-bpr"]), "out", overrides=["data.eval_tokens=64"])


# ---------------------------------------------------------------- verdicts


def lm_run(label, seed, perplexity, rank, fluct):
    return {"router": label, "label": label, "seed": seed, "status": "done", "steps": 300,
            "final": {"metric": perplexity},
            "routing": {"layers": [{"layer": 0, "effective_rank_input": rank}],
                        "fluctuation": [{"step": 300, "top1": [fluct], "topk_set": [fluct]}]}}


def lm_results():
    """topk and xmoe over 3 seeds: xmoe's perplexity about 10 lower in every seed (resolved: better), its effective
    rank about 2 lower in every seed (resolved: lower), its fluctuation up in one seed and down in two (noise)."""
    runs = []
    for seed, (ppl, rank, fluct) in enumerate([(280.0, 20.0, 0.10), (292.0, 18.0, 0.12), (301.0, 21.0, 0.11)]):
        runs.append(lm_run("topk", seed, ppl, rank, fluct))
        xmoe_fluct = fluct + (0.03, -0.02, -0.02)[seed]
        runs.append(lm_run("xmoe", seed, ppl - 10 + 0.2 * seed, rank - 2 - 0.1 * seed, xmoe_fluct))
    runs.append({"router": "xmoe", "label": "xmoe", "seed": 3, "status": "failed", "error": "boom"})
    return {"schema": 1, "task": "lm-bbc", "preset": "tiny", "runs": runs,
            "metric": {"name": "perplexity", "higher_is_better": False}}


def judge(claim, results):
    """One claim alone, a family of one."""
    return judge_claims([claim], {claim.comparison: results})[0]


def test_claims_judged_on_hand_made_results():
    results = lm_results()
    quality = judge(Claim("q", "p", "s", "xmoe", "final.metric", "xmoe", "better"), results)
    assert quality.verdict == "supported" and quality.result["n"] == 3  # xmoe's failed seed 3 has no partner
    assert quality.result["mean"] == pytest.approx(-9.8) and quality.result["ci_high"] < 0
    assert quality.reference_mean == pytest.approx(291.0) and quality.setting == "tiny, 300 steps"
    assert "xmoe - topk on final.metric, claimed better; -9.800 (-3.4 %), [" in quality.line()
    assert "p (holm over 1) = " in quality.line()
    assert judge(CLAIMS.get("xmoe-collapse"), results).verdict == "contradicted"
    assert judge(CLAIMS.get("xmoe-consistency"), results).verdict == "not resolved"
    missing = judge(Claim("m", "p", "s", "xmoe", "routing.load_cv", "xmoe", "better"), results)
    assert missing.verdict == "missing" and missing.result is None and "routing.load_cv" in missing.note


def two_claims_results(d1, d2):
    """topk and two entries at 3 seeds; the entries' perplexity differences d1, d2 (one per seed)."""
    runs = []
    for seed, base in enumerate((280.0, 292.0, 301.0)):
        runs += [lm_run("topk", seed, base, 20.0, 0.1), lm_run("deepseek", seed, base + d1[seed], 20.0, 0.1),
                 lm_run("ssr", seed, base + d2[seed], 20.0, 0.1)]
    return {"schema": 1, "task": "lm-bbc", "preset": "tiny", "runs": runs,
            "metric": {"name": "perplexity", "higher_is_better": False}}


def test_the_claims_are_one_family_holm_and_bh():
    # two claims, each d = -3, -4, -5.5 (t = 5.74, p = 0.029 alone): resolved alone, not under Holm over 2 (0.058),
    # but Benjamini-Hochberg keeps both (2 x 0.029 / 2)
    d = (-3.0, -4.0, -5.5)
    results = two_claims_results(d, d)
    claims = [Claim("a", "p", "s", "deepseek", "final.metric", "deepseek", "better"),
              Claim("b", "p", "s", "deepseek", "final.metric", "ssr", "better")]
    comparisons = {"deepseek": results}
    alone = [judge_claims([c], comparisons)[0] for c in claims]
    assert [j.verdict for j in alone] == ["supported", "supported"]
    together = judge_claims(claims, comparisons)
    assert [j.verdict for j in together] == ["not resolved", "not resolved"]
    assert together[0].result["family"] == "claims" and together[0].result["family_size"] == 2
    assert [j.bh["verdict"] for j in together] == ["supported", "supported"]  # BH: both at their raw p
    explored = judge_claims([claims[0], Claim("b", "p", "s", "deepseek", "final.metric", "ssr", "better",
                                              exploratory=True)], comparisons)
    assert [j.verdict for j in explored] == ["supported", "supported"]  # two families of one
    assert explored[1].result["family"] == "exploratory claims" and explored[1].bh is None
    assert explored[1].shown == "supported (exploratory)"


def test_non_inferiority_and_equivalence_claims():
    ni = Claim("ni", "p", "s", "deepseek", "final.metric", "ssr", "better", kind="non-inferiority", margin="2%",
               reconstruction=True)
    # ssr 0.5 perplexity worse than topk (margin 2 % of ~291 = 5.8): non-inferior; not better
    near = two_claims_results((0.0, 0.0, 0.0), (0.4, 0.6, 0.5))
    assert judge(ni, near).verdict == "supported" and judge(ni, near).shown == "supported (reconstruction)"
    assert judge(Claim("sup", "p", "s", "deepseek", "final.metric", "ssr", "better"), near).verdict == "contradicted"
    far = two_claims_results((0.0, 0.0, 0.0), (20.0, 21.0, 22.5))  # 7 % worse: beyond the margin
    assert judge(ni, far).shown == "contradicted (reconstruction)"
    eq = Claim("eq", "p", "s", "deepseek", "final.metric", "ssr", "equal", kind="equivalence", margin="2%")
    assert judge(eq, near).verdict == "supported" and judge(eq, far).verdict == "contradicted"
    assert "claimed equivalent (margin 2%)" in judge(eq, near).line()


def capacity_run(seed, bpr, vanilla):
    levels = [(m, level) for level, m in enumerate((0.93, 0.92), start=4)]
    return {"router": "vmoe", "label": "vmoe", "seed": seed, "status": "done", "steps": 300,
            "final": {"metric": 0.93},
            "robustness": [{"corruption": name, "level": level, "severity": 0.1, "metric": m}
                           for name, last in (("capacity-bpr", bpr), ("capacity-vanilla", vanilla))
                           for m, level in [*levels[:1], (last, 5)]]}


def capacity_results(pairs):
    runs = [capacity_run(seed, bpr, vanilla) for seed, (bpr, vanilla) in enumerate(pairs)]
    return {"schema": 1, "task": "digits", "preset": "tiny", "runs": runs,
            "metric": {"name": "accuracy", "higher_is_better": True}}


def test_a_claim_against_another_column_of_the_same_runs():
    judgment = judge(CLAIMS.get("vmoe-bpr"), capacity_results([(0.91, 0.89), (0.92, 0.895), (0.90, 0.88)]))
    assert judgment.verdict == "supported"
    assert judgment.result["differences"] == pytest.approx([0.02, 0.025, 0.02])
    assert judgment.reference_mean == pytest.approx(0.8883333)
    flipped = capacity_results([(0.89, 0.91), (0.895, 0.92), (0.88, 0.90)])  # positional dropping keeps more
    assert judge(CLAIMS.get("vmoe-bpr"), flipped).verdict == "contradicted"


def test_the_summary_files(tmp_path):
    (tmp_path / "data" / "xmoe").mkdir(parents=True)
    (tmp_path / "data" / "xmoe" / "results.json").write_text(json.dumps(lm_results()))
    md, js = write_summary(tmp_path / "store", tmp_path / "data", "smoe claims run --all")
    text = md.read_text()
    assert md.parent == tmp_path / "store" and "Written by `smoe claims run --all`" in text
    assert f"results in {tmp_path / 'data'}: 2 claim(s), 1 contradicted, 1 not resolved" in text
    assert "| xmoe-collapse | Chi et al. 2022 (X-MoE) | xmoe - topk on routing.effective_rank_input" in text
    assert "**contradicted**" in text and "The 2 confirmatory claim(s) judged here are one family" in text
    data = json.loads(js.read_text())
    assert [c["name"] for c in data["claims"]] == ["xmoe-collapse", "xmoe-consistency"]
    assert data["claims"][0]["comparison_result"]["n"] == 3


# ---------------------------------------------------------------- the command line


def test_smoe_claims_lists_every_claim(capsys, monkeypatch):
    monkeypatch.setenv("SMOE_STORE", "/the/store")
    assert main(["claims"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name}  [" in out for name in CLAIMS.names())
    assert "smoe compare --task digits --routers vmoe --baseline vmoe --seeds 3 --set model.moe.capacity_factor=1.05 " \
           "--corrupt '' --capacity 0.1,0.25,0.5,0.75,1 --out /the/store/vmoe-bpr" in out


@pytest.mark.parametrize("argv, message", [
    (["claims", "run"], "name claims (see `smoe claims`) or give --all"),
    (["claims", "run", "xmoe-collapse", "--all"], "name claims (see `smoe claims`) or give --all"),
    (["claims", "run", "nope"], "unknown claim 'nope'; available claims: adam-clean"),
    (["claims", "run", "xmoe-collapse", "--seeds", "0"], "seeds must be >= 1, got 0"),
])
def test_claims_run_rejects_bad_requests_before_training(argv, message, tmp_path, capsys):
    assert main([*argv, "--store", str(tmp_path / "store"), "--data", str(tmp_path / "data")]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def fake_compare(outcomes):
    """A `run_compare` that writes hand-made capacity results instead of training; outcomes: per call, the
    (bpr, vanilla) accuracy pairs and the interrupting signal (None)."""
    calls = []

    def run_compare(config, command, progress, grid):
        pairs, interrupted = outcomes[len(calls)]
        calls.append((config.task, config.seeds, command))
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(capacity_results(pairs)))
        return CompareResult(out / "results.json", None, [], interrupted)

    return run_compare, calls


def test_claims_run_prints_verdicts_and_writes_the_summary(tmp_path, capsys, monkeypatch):
    run_compare, calls = fake_compare([([(0.91, 0.89), (0.92, 0.895), (0.90, 0.88)], None)])
    monkeypatch.setattr(claims_run, "run_compare", run_compare)
    store, data = tmp_path / "store", tmp_path / "data"
    monkeypatch.setenv("SMOE_STORE", str(store))  # where the runs go without --store
    assert main(["claims", "run", "vmoe-bpr", "--data", str(data), "--no-progress"]) == 0
    assert calls == [("digits", 3, f"{COMPARISONS.get('vmoe-bpr').command(store / 'vmoe-bpr')}")]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("vmoe-bpr: supported (vmoe: robust.capacity-bpr@5 - robust.capacity-vanilla@5, "
                             "claimed better; +0.02167 (+2.4 %), [+0.01450, +0.02884] (95 %), p (holm over 1) = ")
    assert out[0].endswith(", 3 seeds)")
    assert out[1] == (f"judged as one family: 1 confirmatory claim(s) with results in {data}, Holm "
                      "(Benjamini-Hochberg as a second reading in claims.md); 0 exploratory claim(s) apart")
    assert out[2].startswith(f"results: {data}/<comparison>/results.json")
    assert (data / "vmoe-bpr" / "results.json").is_file()  # the compact results, beside the store's full ones
    assert "| vmoe-bpr |" in (store / "claims.md").read_text()
    assert json.loads((store / "claims.json").read_text())["claims"][0]["verdict"] == "supported"


def test_an_interrupted_claims_run_stops_and_says_so(tmp_path, capsys, monkeypatch):
    run_compare, calls = fake_compare([([(0.91, 0.89)], signal.SIGINT)])
    monkeypatch.setattr(claims_run, "run_compare", run_compare)
    argv = ["claims", "run", "vmoe-bpr", "xmoe-collapse", "--store", str(tmp_path / "store"), "--data",
            str(tmp_path / "data"), "--no-progress"]
    assert main(argv) == 128 + signal.SIGINT
    assert len(calls) == 1 and not (tmp_path / "store" / "xmoe").exists()  # vmoe-bpr was interrupted: xmoe never ran
    assert not (tmp_path / "data" / "vmoe-bpr").exists()  # an interrupted comparison writes no data
    captured = capsys.readouterr()
    assert "vmoe-bpr" not in captured.out and "xmoe-collapse" not in captured.out
    assert "interrupted; run the same command again to resume" in captured.err


@pytest.mark.slow
def test_claims_run_end_to_end(tmp_path, capsys):
    argv = ["claims", "run", "vmoe-bpr", "--seeds", "2", "--steps", "2", "--store", str(tmp_path / "store"),
            "--data", str(tmp_path / "data"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("vmoe-bpr: ") and "claimed better;" in out and "2 seeds" in out
    assert (tmp_path / "store/vmoe-bpr/report.md").is_file() and (tmp_path / "data/vmoe-bpr/results.json").is_file()
    summary = json.loads((tmp_path / "store" / "claims.json").read_text())
    assert [c["name"] for c in summary["claims"]] == ["vmoe-bpr"]
    assert summary["claims"][0]["setting"] == "tiny, 2 steps" and summary["claims"][0]["comparison_result"]["n"] == 2
