"""smoe.workbench.results.verdicts and the report's verdict section on hand-made results: pairing by seed, interval,
p-value, Holm over entries, verdict wording per direction, noise, baseline choice, version 1 files."""

import json
import math

import pytest
from scipy import stats as st

from smoe.cli import main
from smoe.workbench.measure import power
from smoe.workbench.measure.rule import Margin
from smoe.workbench.report.comparison import write_report
from smoe.workbench.results.verdicts import (
    beats_every_other,
    diverged_seeds,
    noise,
    paired_comparisons,
    strongest_corruption,
    with_statistics,
)

T_975_DF2 = 4.302652729749464  # t_{0.975, 2}


def p_df2(d):
    """Two-sided paired t-test p for 3 differences: for df = 2, p = 1 - t / sqrt(2 + t^2)."""
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = abs(mean) / (sd / math.sqrt(3))
    return 1 - t / math.sqrt(2 + t * t)


def run(label, seed, metric, *, load_cv=None, entropy=None, robust=None, status="done", eval_sd=None):
    out = {"router": "topk", "label": label, "seed": seed, "status": status, "final": {"metric": metric}}
    if load_cv is not None:
        out["routing"] = {"layers": [{"layer": 0, "load_cv": load_cv, "entropy": entropy}]}
    if robust is not None:
        out["robustness"] = [{"corruption": name, "level": level, "metric": m} for name, level, m in robust]
    if eval_sd is not None:
        out["eval_sd"] = eval_sd
    return out


def hand_results(higher_is_better=False):
    """a: the baseline; b = a + (3, 4, 5) on the metric, lower load CV, higher entropy; c = a + (1, 2, 3), no
    routing; b has a 4th seed without a partner, c a failed 4th seed."""
    base = (100.0, 110.0, 120.0)
    runs = []
    for s in range(3):
        runs.append(run("a", s, base[s], load_cv=0.5, entropy=1.0, eval_sd=3.0,
                        robust=[("noise", 0, base[s]), ("noise", 2, base[s] + 50), ("blur", 2, base[s] + 10)]))
        runs.append(run("b", s, base[s] + 3 + s, load_cv=(0.2, 0.3, 0.1)[s], entropy=1.0 + 3 + s, eval_sd=4.0,
                        robust=[("noise", 2, base[s] + 40)]))
        runs.append(run("c", s, base[s] + 1 + s))
    runs += [run("b", 3, 1.0), run("c", 3, 1.0, status="failed")]
    return {"schema": 1, "task": "lm-bbc", "metric": {"name": "ppl", "higher_is_better": higher_is_better},
            "runs": runs}


def test_headline_family_interval_p_and_verdict_by_hand():
    comparisons = paired_comparisons(hand_results())
    assert next(iter(comparisons)) == "final.metric"
    b, c = comparisons["final.metric"]["b"], comparisons["final.metric"]["c"]
    # b - a = 3, 4, 5 (seed 3 has no partner): mean 4, sd 1. The headline family: the metric of b and c and the
    # strongest corruption of b (c has none): 3 members, Bonferroni, each judged at 0.05 / 3.
    assert (b["n"], b["differences"], b["seeds"], b["mean"], b["sd"]) == (3, [3.0, 4.0, 5.0], [0, 1, 2], 4.0, 1.0)
    assert (b["family"], b["family_size"], b["level"], b["test"]) == ("headline", 3, 0.05 / 3, "t")
    crit = st.t.ppf(1 - 0.05 / 6, 2)
    assert b["ci_low"] == pytest.approx(4 - crit / math.sqrt(3), abs=1e-12)
    assert b["ci_high"] == pytest.approx(4 + crit / math.sqrt(3), abs=1e-12)
    assert b["p_value"] == pytest.approx(p_df2([3, 4, 5]), abs=1e-12)  # 0.0202
    assert b["p_adjusted"] == pytest.approx(3 * p_df2([3, 4, 5]), abs=1e-12)  # 0.0606: not resolved
    assert c["p_adjusted"] == pytest.approx(3 * p_df2([1, 2, 3]), abs=1e-12)
    assert (b["verdict"], c["verdict"]) == ("not resolved", "not resolved")
    assert b["ci_low"] < 0 < b["ci_high"]  # the interval agrees
    assert b["direction"] is False and b["baseline"] == "a"
    assert b["relative"] == pytest.approx(100 * 4 / 110) and b["d_z"] == 4.0 and b["prob_improvement"] == 0.0
    assert b["mdd"] == pytest.approx(power.mdd("t", 3, 0.05 / 3), abs=1e-12) and b["seeds_needed"] == 4


def test_a_clear_difference_is_worse_in_a_family_of_one():
    runs = [run(label, s, v) for s in range(3) for label, v in (("a", 100.0 + 10 * s), ("b", 103.0 + 10.5 * s))]
    b = paired_comparisons({"schema": 1, "metric": {"name": "ppl", "higher_is_better": False},
                            "runs": runs})["final.metric"]["b"]
    # d = 3, 3.5, 4: t = 3.5 / (0.5 / sqrt 3), p = 0.0068 < 0.05, alone in its family
    assert (b["family_size"], b["verdict"]) == (1, "worse")
    assert b["p_adjusted"] == pytest.approx(p_df2([3, 3.5, 4]), abs=1e-12) and b["ci_low"] > 0


def test_routing_columns_are_their_own_family():
    comparisons = paired_comparisons(hand_results())
    # the routing family: load CV and entropy of b (c has no routing): 2 members, each at 0.025
    cv = comparisons["routing.load_cv"]
    assert set(cv) == {"b"} and cv["b"]["direction"] is False
    assert (cv["b"]["family"], cv["b"]["family_size"]) == ("routing", 2)
    assert cv["b"]["p_adjusted"] == pytest.approx(2 * p_df2([-0.3, -0.2, -0.4]), abs=1e-9)  # 0.070
    assert cv["b"]["verdict"] == "not resolved"
    # entropy has no better side: b - a = 3, 4, 5 reads "higher" (2 x 0.0202)
    entropy = comparisons["routing.entropy"]["b"]
    assert entropy["direction"] is None and entropy["verdict"] == "higher"
    # robustness at the strongest level (noise 2): b - a = -10 three times: zero variance, p = the floor 0.25
    robust = comparisons["robust.noise@2"]["b"]
    assert robust["mean"] == -10.0 and robust["p_value"] == 0.25 and robust["verdict"] == "not resolved"
    assert robust["family"] == "headline" and "zero variance" in robust["note"]
    assert "robust.blur@2" not in comparisons  # only the baseline evaluated blur


def test_a_diverged_or_failed_seed_counts_against_its_entry():
    results = hand_results(higher_is_better=True)
    results["runs"] = [r for r in results["runs"] if r["label"] != "c"]
    results["runs"] += [run("c", 0, 200.0), run("c", 1, math.nan), run("c", 2, 200.0, status="failed")]
    assert diverged_seeds(results)["c"] == {1, 2}
    c = paired_comparisons(results)["final.metric"]["c"]
    assert (c["n"], c["seeds"], c["diverged_seeds"], c["verdict"]) == (1, [0], [1, 2], "not resolved")
    assert "diverged 2 of 3" in c["note"] and c["prob_improvement"] == pytest.approx(1 / 3)
    json.dumps(c, allow_nan=False)


def test_a_a_is_not_resolved_and_changing_the_baseline():
    results = hand_results()
    results["runs"] += [{**r, "label": "a2"} for r in results["runs"] if r["label"] == "a"]
    same = paired_comparisons(results)["final.metric"]["a2"]
    assert same["differences"] == [0.0, 0.0, 0.0] and same["verdict"] == "not resolved"
    assert same["seeds_needed"] is None
    with_margin = paired_comparisons(results, margin=Margin.parse("2%"))["final.metric"]["a2"]
    assert with_margin["verdict"] == "not resolved" and with_margin["margin"] == pytest.approx(2.2)  # 3 seeds
    against_b = paired_comparisons(results, baseline="b")["final.metric"]
    assert set(against_b) == {"a", "c", "a2"} and against_b["a"]["mean"] == -4.0
    with pytest.raises(ValueError, match=r"baseline must be one of the entries a, b, c, a2; got 'nope'"):
        paired_comparisons(results, baseline="nope")


def test_noise_eval_against_seed():
    n = noise(hand_results())
    # eval: root mean square of 3 (a, 3 runs) and 4 (b, 3 runs) = sqrt((9 + 16) / 2)
    assert n["eval_sd"] == pytest.approx(math.sqrt(12.5))
    # seed: a 100, 110, 120 (variance 100), b 103, 114, 125 and 1 (seed 3) (variance of 4 values), c 101, 112, 123
    b = [103.0, 114.0, 125.0, 1.0]
    var_b = sum((x - sum(b) / 4) ** 2 for x in b) / 3
    assert n["seed_sd"] == pytest.approx(math.sqrt((2 * 100 + 3 * var_b + 2 * 121) / 7))
    assert n["dominant"] == "seed"
    assert n["comparable"] is False
    assert noise({"schema": 1, "runs": [run("a", 0, 1.0, eval_sd=0.5)]}) == {
        "eval_sd": 0.5, "seed_sd": None, "dominant": None, "comparable": None}


def test_strongest_corruption_and_best_mark():
    results = hand_results()
    assert strongest_corruption(results, "a") == "robust.noise@2"  # a: noise 2 (+50) hurts more than blur 2 (+10)
    assert not beats_every_other(results, "a")  # c is not resolved against a
    results["runs"] = [r for r in results["runs"] if r["label"] != "c"]
    assert beats_every_other(results, "a")  # b is resolved worse (p = 0.0202, alone in the family)
    assert not beats_every_other({**results, "metric": {"name": "ppl"}}, "a")  # no direction, no best


def test_version_1_file_gets_version_3_statistics_and_a_verdict_report(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(hand_results()))
    full = with_statistics(json.loads((tmp_path / "results.json").read_text()))
    assert (full["schema"], full["entries"], full["baseline"], full["margin"]) == (3, ["a", "b", "c"], "a", None)
    assert full["families"]["headline"]["columns"] == ["final.metric", "robust.noise@2"]
    assert full["families"]["headline"]["rule"] == "Bonferroni over 3 (family headline), alpha 0.05"
    assert full["comparisons"]["final.metric"]["b"]["verdict"] == "not resolved"
    assert full["noise"]["dominant"] == "seed"
    marked = {**full, "comparisons": {"read": {}}}  # judged the same way: read, not computed again
    assert with_statistics(marked)["comparisons"] == {"read": {}}
    assert with_statistics(marked, baseline="b")["comparisons"] != {"read": {}}
    assert with_statistics(full, margin=Margin.parse("2%"))["margin"] == "2%"
    json.dumps(full, allow_nan=False)  # strict JSON: NaN became null
    md = write_report(tmp_path).markdown.read_text()
    head = md.split("## Results")[0]
    assert head.index("## Verdicts against a") < head.index("### ppl (lower is better)") < head.index("Headline")
    assert "| b | 3 | +4 (+3.6 %) | [-0.4160, +8.416] (98.33 %) | 0.06061 (t) | not resolved | 4 | 0.00 [0.00, " in head
    assert "### Strongest corruption: ppl @ noise L2" in head and "| c | 0 | no seed paired with the baseline" in head
    assert "Family headline: Bonferroni over 3 (family headline), alpha 0.05." in head
    assert "| load CV | not resolved (-0.3000) | no paired seed |" in head and "(plots/forest.png)" in head
    assert "No margin was given" in head
    assert (tmp_path / "plots" / "forest.png").is_file()
    assert main(["report", str(tmp_path), "--baseline", "b"]) == 0
    assert "## Verdicts against b" in (tmp_path / "report.md").read_text()
    assert main(["report", str(tmp_path), "--margin", "2%"]) == 0
    assert "With the margin 2%" in (tmp_path / "report.md").read_text()
    assert main(["report", str(tmp_path), "--baseline", "zz"]) == 2
    assert "baseline must be one of the entries a, b, c; got 'zz'" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--margin=-1%"]) == 2  # argparse reads a bare "-1%" as an option
    assert "margin must be a positive number" in capsys.readouterr().err


def test_one_entry_has_nothing_to_compare(tmp_path):
    results = {"schema": 2, "task": "digits", "metric": {"name": "accuracy", "higher_is_better": True},
               "entries": ["topk"], "runs": [run("topk", 0, 0.9)]}
    assert with_statistics(results)["comparisons"] == {}
    md = write_report(results, tmp_path).markdown.read_text()
    assert "Fewer than two entries: nothing to compare." in md and not (tmp_path / "plots" / "forest.png").exists()
