"""The report a paper can use, on hand-made results: the bottom line, the warnings (undertrained, contention, idle
experts, diverged seeds), the pictures of the evidence, the LaTeX and CSV exports, and the report across tasks."""

import csv
import json
import math
import re
import shutil
import subprocess

import pytest
from scipy import stats as st

from smoe.cli import main
from smoe.workbench.claims.run import write_claims_across
from smoe.workbench.claims.table import judge_data
from smoe.workbench.report.across_tasks import load_tasks, scores, summarize_entries
from smoe.workbench.report.caveats import contention, diverged, idle_experts, undertrained
from smoe.workbench.report.comparison import write_report
from smoe.workbench.report.evidence import improvement_of, paired_curve
from smoe.workbench.report.export import write_tables
from smoe.workbench.report.verdict_section import confidence, sentence
from smoe.workbench.results.verdicts import with_statistics

T_975_DF2 = 4.302652729749464  # t_{0.975, 2}
T_975_DF1 = 12.706204736174704  # t_{0.975, 1}


def run(label, seed, metric, *, status="done", curve=(), **final):
    """A run of `label` at `seed` with this headline metric (and other `final` values); curve: (step, metric)."""
    return {"router": label, "label": label, "seed": seed, "status": status, "steps": 100, "train_time_s": 10.0,
            "final": {"metric": metric, **final}, "curve": [{"step": s, "metric": m} for s, m in curve]}


def lm_results(values, *, unigram=701.5, machine=None, curves=False, task="lm-bbc"):
    """values: label -> per-seed perplexity (lower is better); every run records the unigram perplexity."""
    runs = [run(label, s, ms[s], unigram_perplexity=unigram, curve=[(50, ms[s] + 100 + 10 * s), (100, ms[s])]
                if curves else ()) for s in range(3) for label, ms in values.items()]
    return {"schema": 2, "task": task, "preset": "tiny", "metric": {"name": "perplexity", "higher_is_better": False},
            "entries": list(values), "baseline": next(iter(values)), "machine": machine or {"jobs": 1, "cores": 2},
            "command": f"smoe compare --task {task}", "runs": runs}


def digits_results(values):
    runs = [run(label, s, ms[s]) for s in range(3) for label, ms in values.items()]
    return {"schema": 2, "task": "digits", "metric": {"name": "accuracy", "higher_is_better": True},
            "entries": list(values), "baseline": next(iter(values)), "runs": runs}


# ---------------------------------------------------------------- the bottom line


def test_sentence_is_the_relative_difference_with_its_interval_verdict_and_seeds():
    results = with_statistics(lm_results({"topk": (100.0, 110.0, 120.0), "xmoe": (97.0, 106.0, 115.0)}))
    # xmoe - topk = -3, -4, -5: mean -4 +- t_{.975,2} / sqrt(3) (sd 1), in % of topk's mean 110; alone: t p 0.02
    half = T_975_DF2 / math.sqrt(3)
    low, high = 100 * (4 - half) / 110, 100 * (4 + half) / 110
    assert sentence(results, "xmoe") == (f"xmoe: {400 / 110:.1f} % lower perplexity than topk [{low:.1f}, "
                                         f"{high:.1f}], better, 3 seeds.")
    # a recorded comparison (schema 3) gives the relative mean, the margin, the level and the diverged seeds
    c = {"n": 5, "mean": -4.0, "ci_low": -6.0, "ci_high": -2.0, "relative": -2.0, "verdict": "equivalent",
         "margin": 1.0, "margin_spec": "2%", "level": 0.025, "diverged_seeds": [3]}
    recorded = {**results, "comparisons": {"final.metric": {"xmoe": c}}}
    assert sentence(recorded, "xmoe") == ("xmoe: 2.0 % lower perplexity than topk [1.0, 3.0], equivalent within a "
                                          "margin of ±2%, 5 seeds, 1 diverged.")
    assert confidence(c) == "97.5 %" and confidence({}) == "95 %"
    assert sentence({**recorded, "comparisons": {}}, "xmoe") == "xmoe: no seed paired with topk, so no verdict."


def test_first_screen_order_and_units_in_headings(tmp_path):
    results = lm_results({"topk": (100.0, 110.0, 120.0), "xmoe": (97.0, 106.0, 115.0), "vmoe": (101, 111, 119)},
                         curves=True)
    md = write_report(results, tmp_path, vector=False).markdown.read_text()
    first = md.index("xmoe: 3.6 % lower perplexity than topk")
    assert md.index("# Router comparison") < first < md.index("## Verdicts against topk") < md.index("## Evidence")
    # two entries in the headline family: Bonferroni, each interval at 1 - 0.05 / 2
    assert ("### perplexity (lower is better): entry - topk in perplexity, intervals at 97.5 %, p Bonferroni-adjusted, "
            "no margin") in md
    method = md.index("<details><summary>Method: how the verdicts are reached</summary>")
    assert md.index("## Verdicts against topk") < method < md.index("## Evidence") < md.index("## The comparison")
    html = (tmp_path / "report.html").read_text()
    assert "<details><summary>Method: how the verdicts are reached</summary><p>Each entry minus topk" in html


# ---------------------------------------------------------------- warnings


def test_lm_bbc_at_100_steps_is_undertrained_and_says_so(tmp_path):
    results = lm_results({"topk": (620.0, 616.0, 624.0), "xmoe": (618.0, 619.0, 622.0)})
    found = undertrained(results)
    # 620 against the unigram's 701.5: 11.6 % apart, within 25 %
    assert len(found) == 2 and found[0].startswith("topk has barely trained: its mean perplexity 620 lies within "
                                                   "25 % of the unigram model (701.5; 12 % apart)")
    md = write_report(results, tmp_path, vector=False).markdown.read_text()
    warnings = md.split("## Warnings")[1].split("\n## ")[0]
    assert md.index("## Warnings") < md.index("## Verdicts against topk")
    assert "topk has barely trained" in warnings and "xmoe has barely trained" in warnings
    assert undertrained(lm_results({"topk": (292.0, 290.0, 300.0)})) == []  # the tiny preset's 300 steps: trained
    digits = digits_results({"topk": (0.11, 0.12, 0.10)})
    for r in digits["runs"]:
        r["final"]["chance_accuracy"] = 0.1
    assert "always answering the majority class" in undertrained(digits)[0]  # 0.11 of chance 0.1


def test_jobs_2_report_carries_the_contention_note_beside_the_costs(tmp_path):
    results = lm_results({"topk": (292.0, 290.0, 300.0), "xmoe": (280.0, 285.0, 290.0)},
                         machine={"jobs": 2, "cores": 16, "load_average": [1.0, 1.0, 1.0]})
    note = contention(results)
    assert note.startswith("Costs measured under contention: 2 runs trained at once (--jobs 2).")
    md = write_report(results, tmp_path, vector=False).markdown.read_text()
    cost = md.split("### Cost")[1].split("\n### ")[0]
    assert "- Costs measured under contention: 2 runs trained at once" in cost
    quiet = {"jobs": 1, "cores": 16, "load_average": [1.0, 1.0, 1.0]}
    assert contention({**results, "machine": quiet}) is None
    loaded = {**results, "machine": quiet, "runs": [{**results["runs"][0], "load_average": 20.5}]}
    assert "the load average reached 20.50 on 16 cores" in contention(loaded)
    assert contention({**results, "machine": {}}) is None  # older results: nothing recorded, nothing claimed


def test_experts_never_chosen_and_never_chosen_first_per_layer():
    results = lm_results({"topk": (292.0, 290.0, 300.0)})
    for r in results["runs"]:
        r["routing"] = {"layers": [{"layer": 0, "load": [0.5, 0.5, 0.0, 0.0], "first_choice": [1.0, 0.0, 0.0, 0.0]},
                                   {"layer": 1, "load": [0.25] * 4, "first_choice": [0.25] * 4}]}
    results["runs"][1]["routing"]["layers"][0]["load"] = [0.5, 0.4, 0.1, 0.0]
    assert idle_experts(results) == [
        "topk, layer 0: expert 2 (seeds 0, 2), expert 3 (seeds 0, 1, 2) never chosen by any token of the probe set "
        "(3 seeds recorded routing).",
        "topk, layer 0: expert 1 (seeds 0, 1, 2), expert 2 (seed 1) never chosen first by any token of the probe set "
        "(3 seeds recorded routing)."]


def test_diverged_and_failed_seeds_are_named():
    results = lm_results({"topk": (292.0, 290.0, 300.0), "xmoe": (math.nan, 285.0, 290.0)})
    results["runs"].append(run("xmoe", 3, None, status="failed"))
    results["runs"][-1]["error"] = "RuntimeError: loss is nan\n at step 7"
    assert diverged(results) == [
        "xmoe seed 0 diverged (final perplexity is not a finite number); a verdict counts it against xmoe.",
        "xmoe seed 3 failed (RuntimeError: loss is nan at step 7); a verdict counts it against xmoe."]


# ---------------------------------------------------------------- pictures of the evidence


def test_paired_difference_curve_by_hand():
    entry = {0: run("a", 0, 1.0, curve=[(10, 5.0), (20, 3.0)]), 1: run("a", 1, 1.0, curve=[(10, 6.0), (20, 4.0)]),
             2: run("a", 2, 1.0, curve=[(10, 9.0)])}
    base = {0: run("b", 0, 1.0, curve=[(10, 4.0), (20, 4.0)]), 1: run("b", 1, 1.0, curve=[(10, 4.0), (20, 4.0)])}
    curve = paired_curve(entry, base)  # seed 2 has no baseline run: left out
    # step 10: d = 1, 2 -> mean 1.5, sd sqrt(0.5), half-width t_{.975,1} sqrt(0.5) / sqrt(2) = t / 2
    assert curve[10] == (1.5, pytest.approx(T_975_DF1 / 2), 2)
    assert curve[20] == (-0.5, pytest.approx(T_975_DF1 / 2), 2)


def test_probability_of_improvement_is_the_recorded_one():
    recorded = {"prob_improvement": 0.8, "prob_improvement_low": 0.5, "prob_improvement_high": 1.0}
    assert improvement_of(recorded) == (0.8, 0.5, 1.0)
    assert improvement_of({"prob_improvement": None}) is None


def test_evidence_pictures_are_drawn_with_captions_that_say_what_is_paired(tmp_path):
    results = lm_results({"topk": (100.0, 110.0, 120.0), "xmoe": (97.0, 106.0, 115.0)}, curves=True)
    files = write_report(results, tmp_path)
    stems = {p.stem for p in files.plots}
    assert {"paired_seeds", "difference_curve", "improvement"} <= stems
    for stem in ("paired_seeds", "difference_curve", "improvement"):
        assert (tmp_path / "plots" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    md = files.markdown.read_text()
    evidence = md.split("## Evidence")[1].split("\n## ")[0]
    assert "paired by seed: at one seed both runs saw the same batches" in evidence
    assert "minus topk's at the same seed and step" in evidence and "ties count one half" in evidence


# ---------------------------------------------------------------- exports


def tabular_rows(tex):
    """(column spec, rows) of every tabular: rows are the lines ending in \\\\ between \\midrule and \\bottomrule."""
    out = []
    for spec, body in re.findall(r"\\begin\{tabular\}\{([lcr]+)\}(.*?)\\end\{tabular\}", tex, re.DOTALL):
        rows = [line for line in body.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()]
        out.append((spec, rows))
    return out


def check_latex(tex):
    """Parser-level checks: balanced environments, every row with as many cells as the column spec, no unescaped
    special character, math shifts paired; returns the rows' cells."""
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") > 0
    assert len(re.findall(r"(?<!\\)\{", tex)) == len(re.findall(r"(?<!\\)\}", tex))  # braces balanced
    assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == tex.count(r"\begin{table}")
    cells = []
    for spec, rows in tabular_rows(tex):
        for row in rows:
            assert row.endswith(r" \\")
            parts = re.split(r"(?<!\\)&", row[:-3])
            assert len(parts) == len(spec), row
            for part in parts:
                assert not re.search(r"(?<!\\)[%#_^~]", part), part
                assert len(re.findall(r"(?<!\\)\$", part)) % 2 == 0, part
            cells.append([p.strip() for p in parts])
    return cells


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    results = lm_results({"topk": (100.0, 110.0, 120.0), "xmoe": (97.0, 106.0, 115.0), "vmoe_k1": (99, 111, 121)})
    results["runs"][4]["final"]["metric"] = math.nan  # xmoe seed 1 diverged
    (out / "results.json").write_text(json.dumps(results))
    assert main(["report", str(out), "--latex", "--csv"]) == 0
    return out


def test_latex_holds_the_verdicts_and_the_seeds_and_parses(exported):
    tex = (exported / "tables.tex").read_text()
    cells = check_latex(tex)
    assert tex.index("Verdicts against topk: perplexity (lower is better)") < tex.index("Per seed:")
    verdicts = {row[0]: row for row in cells if len(row) == 10 and row[0] != "entry"}
    # xmoe: seeds 0, 2 paired, seed 1 diverged: -3, -5 over topk's 100, 120; two seeds: no interval, no verdict
    assert verdicts["xmoe"][:4] == ["xmoe", "2, diverged 1", r"-4 (-3.6 \%)", "unbounded"]
    assert verdicts["xmoe"][5] == "not resolved (fewer than 3 paired seeds; diverged 1 of 3)"
    # vmoe\_k1: -1, +1, +1: mean 1/3, sd / sqrt(3) = 2/3, interval at 1 - 0.05 / 2 (Bonferroni over the two entries)
    half = st.t.ppf(1 - 0.025 / 2, 2) * 2 / 3
    assert verdicts[r"vmoe\_k1"][2:4] == [r"+0.3333 (+0.3 \%)", f"[{1 / 3 - half:.3f}, +{1 / 3 + half:.3f}]"]
    assert r"difference vs topk & interval (97.5 \%) & p adjusted (test)" in tex  # one level, said once
    seeds = [row for row in cells if len(row) == 6 and row[0] != "entry"]
    assert ["xmoe", "0", "done", "97", "100", "-3"] in seeds and ["topk", "0", "done", "100", "", ""] in seeds
    assert ["xmoe", "1", "done", "n/a", "110", ""] in seeds


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles_with_pdflatex(exported, tmp_path):
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs,graphicx}\n"
                                        "\\begin{document}\n"
                                        f"\\input{{{exported / 'tables.tex'}}}\n\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Overfull \\hbox" not in (tmp_path / "paper.log").read_text()  # every table fits the line
    assert (tmp_path / "paper.pdf").read_bytes()[:5] == b"%PDF-"


def test_csv_holds_raw_verdicts_and_every_seed(exported):
    with open(exported / "verdicts.csv", newline="") as f:
        rows = {(r["column"], r["entry"]): r for r in csv.DictReader(f)}
    xmoe = rows["final.metric", "xmoe"]
    assert (xmoe["n"], float(xmoe["mean"]), xmoe["verdict"], xmoe["confidence"]) == ("2", -4.0, "not resolved",
                                                                                    "97.5 %")
    assert float(xmoe["relative"]) == pytest.approx(-400 / 110)  # topk's mean over the paired seeds 0, 2
    assert (xmoe["seeds"], xmoe["diverged_seeds"], xmoe["relative_low"]) == ("0 2", "1", "")
    with open(exported / "seeds.csv", newline="") as f:
        seeds = list(csv.DictReader(f))
    assert len(seeds) == 9 and {"entry": "xmoe", "seed": "2", "status": "done", "metric": "115.0",
                                "baseline_metric": "120.0", "difference": "-5.0"} in seeds


def test_write_tables_takes_the_baseline(tmp_path):
    results = lm_results({"topk": (100.0, 110.0, 120.0), "xmoe": (97.0, 106.0, 115.0)})
    tex = (write_tables(results, tmp_path, latex=True, baseline="xmoe")[0]).read_text()
    # topk - xmoe = 3, 4, 5 over xmoe's mean 106; alone in its family: a 95 % interval
    assert "Verdicts against xmoe" in tex and r"topk & 3 & +4 (+3.8 \%) & [+1.516, +6.484] & " in tex
    assert r"interval (95 \%)" in tex


# ---------------------------------------------------------------- across tasks


TWO_TASKS = (
    {"topk": (100.0, 110.0, 120.0), "vmoe": (99.0, 108.0, 119.0), "xmoe": (105.0, 112.0, 126.0)},
    {"topk": (0.50, 0.60, 0.70), "vmoe": (0.53, 0.63, 0.70), "xmoe": (0.44, 0.57, 0.64)},
)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("across")
    for name, results in (("lm", lm_results(TWO_TASKS[0])), ("digits", digits_results(TWO_TASKS[1]))):
        (root / name).mkdir()
        (root / name / "results.json").write_text(json.dumps(results))
    return root


def test_normalised_scores_and_aggregate_by_hand(two_tasks):
    tasks = load_tasks([two_tasks / "lm", two_tasks / "digits"])
    per_entry = scores(tasks)
    # lm (lower is better): vmoe - topk = -1, -2, -1 over topk's mean 110 -> +0.91, +1.82, +0.91 %
    assert per_entry["vmoe"]["lm-bbc"] == pytest.approx([100 / 110, 200 / 110, 100 / 110])
    assert per_entry["vmoe"]["digits"] == pytest.approx([5.0, 5.0, 0.0])  # +0.03, +0.03, 0 over 0.6
    summary = {s.label: s for s in summarize_entries(tasks)}
    vmoe = summary["vmoe"]
    # IQM of the 6 scores: drop 0 and one 5 -> mean of 0.91, 0.91, 1.82, 5
    assert vmoe.iqm[0] == pytest.approx((100 / 110 + 100 / 110 + 200 / 110 + 5) / 4)
    assert vmoe.improvement[0] == pytest.approx((6 / 9 + 5.5 / 9) / 2)  # rliable: run pairs, mean over tasks
    assert (vmoe.tasks, vmoe.seeds) == (2, 6)


def test_report_over_two_tasks_has_one_aggregate_table_and_a_critical_difference_diagram(two_tasks, capsys):
    out = two_tasks / "out"
    assert main(["report", str(two_tasks / "lm"), str(two_tasks / "digits"), "--out", str(out), "--latex",
                 "--csv"]) == 0
    md = (out / "report.md").read_text()
    assert md.count("| entry | tasks | paired seeds | IQM of normalised scores") == 1
    per_task = md.split("## Per task")[1].split("\n## ")[0]
    assert "| entry | lm-bbc vs topk | digits vs topk |" in per_task and "| topk | baseline | baseline |" in per_task
    assert "| vmoe | not resolved, +1.2 % | not resolved, +3.3 % |" in per_task
    assert (out / "plots" / "critical_difference.png").is_file() and "(plots/critical_difference.png)" in md
    cd = md.split("## Critical-difference diagram")[1].split("\n## ")[0]
    # 6 (task, seed) blocks; mean ranks vmoe 6.5 / 6, topk 11.5 / 6, xmoe 3; Friedman with the tie of digits seed 2
    assert "over 6 blocks" in cd and "Friedman chi-square 11.57 (2 degrees of freedom)" in cd
    assert "Nemenyi critical difference 1.353" in cd
    check_latex((out / "across.tex").read_text())
    with open(out / "aggregate.csv", newline="") as f:
        assert [r["entry"] for r in csv.DictReader(f)] == ["vmoe", "xmoe"]
    assert main(["report", str(two_tasks / "lm"), str(two_tasks / "digits")]) == 2
    assert "give --out DIR" in capsys.readouterr().err


def test_claims_read_their_comparisons_across(tmp_path):
    for name, values in (("xmoe", {"topk": (1.0, 2.0, 3.0), "xmoe": (2.0, 3.0, 5.0)}),
                         ("deepseek", {"topk": (100.0, 110.0, 120.0), "deepseek": (99.0, 108.0, 119.0),
                                       "ssr": (101.0, 111.0, 121.0)})):
        results = lm_results(values)
        for r in results["runs"]:
            r["routing"] = {"layers": [{"layer": 0, "effective_rank_input": r["final"]["metric"],
                                        "load_cv": r["final"]["metric"]}]}
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    judged = judge_data(tmp_path)[0]
    html = write_claims_across(tmp_path, tmp_path, judged)
    md = (tmp_path / "across" / "report.md").read_text()
    assert html == tmp_path / "across" / "report.html" and "| entry | lm-bbc (deepseek) vs topk |" in md
    assert "## Critical-difference diagram\n\nNeeds two routers in every task" in md  # only topk is in both
    assert write_claims_across(tmp_path, tmp_path, judged[:0]) is None
