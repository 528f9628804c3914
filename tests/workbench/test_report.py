import base64
import copy
import csv
import json
import math
import multiprocessing
import re

import pytest

from smoe.cli import main
from smoe.workbench.report.comparison import Stat, format_number, format_stat, summarize, write_report
from smoe.workbench.results.schema import load_results

PLOTS = {"curves", "final_metric", "load", "fluctuation", "robustness", "coactivation", "latent", "forest",
         "paired_seeds", "difference_curve", "improvement"}


def layer(i, load_cv, nmi):
    return {"layer": i, "load": [0.4, 0.3, 0.2, 0.1], "load_cv": load_cv, "max_over_mean": 1.6, "entropy": 1.2,
            "margin": 0.3, "active_experts": 4, "dropped_fraction": 0.0, "effective_rank_input": 30.0,
            "effective_rank_router": 3.5, "specialization_nmi": {"topic": nmi}}


def make_run(label, seed, metric, valid_loss, *, cvs=(0.2, 0.4), last_top1=(0.1, 0.3), robust=None,
             sensitivity=(11.0, 5.0), train_time=60.0, routing=True, curve=True, **extra):
    """A finished run of `label`; robust: metric at levels 0, 1, 2 of "substitute" (None: not evaluated)."""
    run = {"router": label, "label": label, "seed": seed, "options": {"k": 2}, "run_dir": f"runs/{label}-s{seed}",
           "status": "done", "error": None, "train_time_s": train_time, "steps": 300, "tokens_per_s": 1000.0,
           "final": {"metric": metric, "valid_loss": valid_loss, "test_metric": metric + 5}}
    if curve:
        run["curve"] = [{"step": s, "valid_loss": valid_loss + 1 - s / 300, "metric": metric + 90 - s / 10}
                        for s in (100, 200, 300)]
    if routing:
        run["routing"] = {
            "layers": [layer(0, cvs[0], 0.12), layer(1, cvs[1], 0.18)],
            # listed out of step order: the report must take the last *step* (200), not the last entry
            "fluctuation": [{"step": 200, "top1": list(last_top1), "topk_set": [0.2, 0.4]},
                            {"step": 100, "top1": [0.5, 0.7], "topk_set": [0.6, 0.8]}],
            "coactivation": [{"layers": [0, 1], "nmi": 0.1, "matrix": [[0.5, 0.5, 0, 0], [0, 1, 0, 0],
                                                                       [0.25, 0.25, 0.25, 0.25], [0, 0, 0, 1]]}],
            "sensitivity": [{"layer": 0, "clean": metric, "dropped": metric + sensitivity[0]},
                            {"layer": 1, "clean": metric, "dropped": metric + sensitivity[1]}],
        }
    if robust is not None:
        run["robustness"] = [{"corruption": "substitute", "level": lvl, "severity": sev, "metric": m}
                             for lvl, sev, m in zip((0, 1, 2), (0.0, 0.025, 0.05), robust)]
    return {**run, **extra}


def make_results(higher_is_better=False):
    """topk and xmoe x 2 seeds (+ a failed xmoe run, an xmoe run without routing data), ssr with one seed (and a
    latent map), sinkhorn with one seed and neither routing data nor curve nor robustness."""
    latent = {"points": [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0]], "expert": [0, 1, 1, 2],
              "label": [0, 0, 1, 1]}
    runs = [
        make_run("topk", 0, 120.0, 4.8, robust=(120.0, 130.0, 150.0)),
        make_run("topk", 1, 124.0, 4.9, cvs=(0.3, 0.5), last_top1=(0.3, 0.5), robust=(124.0, 135.0, 160.0),
                 sensitivity=(12.0, 8.0), train_time=62.0),
        make_run("xmoe", 0, 110.0, 4.6, robust=(110.0, 120.0, 140.0)),
        make_run("xmoe", 1, 116.0, 4.7, routing=False),
        # failed: its numbers must not enter the means
        {"router": "xmoe", "label": "xmoe", "seed": 2, "status": "failed", "error": "RuntimeError: boom\n  at step 7",
         "final": {"metric": 1.0}},
        make_run("ssr", 0, 130.0, 5.0, robust=(130.0, 150.0, 170.0), latent=latent),
        make_run("sinkhorn", 0, 140.0, 5.2, routing=False, curve=False),
    ]
    return {"schema": 1, "task": "lm-bbc", "preset": "tiny", "command": "smoe compare --task lm-bbc --seeds 2",
            "metric": {"name": "ppl", "higher_is_better": higher_is_better},
            "machine": {"cpu": "test cpu", "threads": 2, "torch": "2.13.0", "device": "cpu"},
            "created": "2026-11-29T21:00:00Z", "runs": runs}


def table(md, first_title):
    """Rows (lists of cells) of the Markdown table whose third header cell is first_title."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| router | seeds | {first_title}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split(" | ")])
    return rows


def row_of(rows, label):
    return next(r for r in rows if r[0].split(" (")[0] == label)


def without_images(text):
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    files = write_report(make_results(), out)
    return out, files, files.markdown.read_text(), files.html.read_text()


# ---------------------------------------------------------------- summary numbers


def test_summary_means_and_sample_stds_by_hand():
    rows = {row.label: row for row in summarize(make_results())}
    topk = rows["topk"].cells
    # ppl 120, 124: mean 122, std = sqrt(((-2)^2 + 2^2) / (2 - 1)) = sqrt(8) = 2.828427
    assert topk["final.metric"] == Stat(122.0, pytest.approx(math.sqrt(8)), 2)
    # valid loss 4.8, 4.9: mean 4.85, std = sqrt(2 * 0.05^2 / 1) = 0.0707107
    assert topk["final.valid_loss"].mean == pytest.approx(4.85)
    assert topk["final.valid_loss"].std == pytest.approx(math.sqrt(0.005))
    # extra final key: 125, 129 -> 127 +- sqrt(8)
    assert (topk["final.test_metric"].mean, topk["final.test_metric"].std) == (127.0, pytest.approx(math.sqrt(8)))
    # load CV averaged over layers per run: (0.2 + 0.4) / 2 = 0.3, (0.3 + 0.5) / 2 = 0.4 -> 0.35 +- sqrt(0.005)
    assert topk["routing.load_cv"].mean == pytest.approx(0.35)
    assert topk["routing.load_cv"].std == pytest.approx(math.sqrt(0.005))
    # fluctuation at the last step (200): top-1 mean over layers 0.2 and 0.4 -> 0.3 +- sqrt(2 * 0.1^2) = 0.141421
    assert topk["fluctuation.top1"].mean == pytest.approx(0.3)
    assert topk["fluctuation.top1"].std == pytest.approx(math.sqrt(0.02))
    assert topk["fluctuation.topk_set"].mean == pytest.approx(0.3)  # (0.2 + 0.4) / 2 in both seeds
    assert topk["fluctuation.topk_set"].std == pytest.approx(0.0)
    # strongest corruption level is 2: 150, 160 -> 155 +- sqrt(50) = 7.071068
    assert topk["robust.substitute@2"] == Stat(155.0, pytest.approx(math.sqrt(50)), 2)
    # sensitivity: mean over layers of dropped - clean: (11 + 5) / 2 = 8, (12 + 8) / 2 = 10 -> 9 +- sqrt(2)
    assert topk["sensitivity"] == Stat(9.0, pytest.approx(math.sqrt(2)), 2)
    assert topk["routing.nmi.topic"].mean == pytest.approx(0.15)  # (0.12 + 0.18) / 2
    assert topk["coactivation.nmi"].mean == pytest.approx(0.1)
    assert topk["train_time_s"] == Stat(61.0, pytest.approx(math.sqrt(2)), 2)


def test_summary_skips_failed_runs_and_counts_what_each_seed_recorded():
    rows = {row.label: row for row in summarize(make_results())}
    xmoe = rows["xmoe"]
    assert (xmoe.runs, xmoe.finished) == (3, 2)
    # 110, 116 (the failed run's 1.0 is left out): mean 113, std sqrt(9 + 9) = 4.242641
    assert xmoe.cells["final.metric"] == Stat(113.0, pytest.approx(math.sqrt(18)), 2)
    # only seed 0 has routing data and robustness
    assert xmoe.cells["routing.load_cv"] == Stat(pytest.approx(0.3), None, 1)
    assert xmoe.cells["robust.substitute@2"] == Stat(140.0, None, 1)
    assert rows["ssr"].cells["final.metric"] == Stat(130.0, None, 1)
    sinkhorn = rows["sinkhorn"].cells
    assert "routing.load_cv" not in sinkhorn and "robust.substitute@2" not in sinkhorn
    assert "fluctuation.top1" not in sinkhorn and "sensitivity" not in sinkhorn


@pytest.mark.parametrize(("higher_is_better", "order"), [(False, ["xmoe", "topk", "ssr", "sinkhorn"]),
                                                          (True, ["sinkhorn", "ssr", "topk", "xmoe"])])
def test_best_router_first_for_both_directions(higher_is_better, order):
    rows = summarize(make_results(higher_is_better))
    assert [row.label for row in rows] == order
    # xmoe - topk = -10, -8 over 2 seeds (t-test p = 0.07), ssr and sinkhorn have 1 seed: nothing is resolved
    assert not any(row.best for row in rows)


def test_best_is_marked_only_when_resolved_against_every_other_router():
    runs = [make_run(label, seed, metric, 4.0) for label, metrics in
            (("topk", (120.0, 124.0, 118.0)), ("xmoe", (110.0, 115.0, 109.0)), ("ssr", (130.0, 131.0, 126.0)))
            for seed, metric in enumerate(metrics)]
    results = {**make_results(), "runs": runs}
    # topk - xmoe = 10, 9, 9 and ssr - xmoe = 20, 16, 17: both resolved worse (Holm over the two) -> xmoe (best)
    assert [(r.label, r.best) for r in summarize(results)] == [("xmoe", True), ("topk", False), ("ssr", False)]
    runs[5]["final"]["metric"] = 128.0  # xmoe - topk = -10, -9, +10: not resolved -> no mark
    assert not any(r.best for r in summarize(results))


def test_no_direction_or_a_tie_marks_no_best():
    results = make_results()
    del results["metric"]["higher_is_better"]
    rows = summarize(results)
    assert [row.label for row in rows] == ["sinkhorn", "ssr", "topk", "xmoe"] and not any(r.best for r in rows)
    results = make_results()
    results["runs"][5]["final"]["metric"] = 113.0  # ssr ties xmoe's mean
    assert [(r.label, r.best) for r in summarize(results)][:3] == [("ssr", False), ("xmoe", False), ("topk", False)]


def test_non_finite_values_are_not_averaged_and_sort_last():
    results = make_results()
    results["runs"][1]["final"]["metric"] = math.nan
    rows = summarize(results)
    topk = next(r for r in rows if r.label == "topk")
    assert topk.cells["final.metric"].nonfinite == 1 and math.isnan(topk.cells["final.metric"].mean)
    assert rows[-1].label == "topk" and rows[0].label == "xmoe"


# ---------------------------------------------------------------- formatting


def test_format_stat_cases():
    assert format_stat(None, 2) == "missing"
    assert format_stat(Stat(122.0, math.sqrt(8), 2), 2) == "122.0 ± 2.8"  # std to 2 figures, the mean to its place
    assert format_stat(Stat(130.0, None, 1), 1) == "130 (n=1)"
    assert format_stat(Stat(0.3, None, 1), 2) == "0.3000 (n=1)"
    assert format_stat(Stat(0.35, 0.05, 2), 3) == "0.350 ± 0.050 (n=2)"  # only 2 of 3 seeds recorded it
    assert format_stat(Stat(math.nan, math.nan, 2, 1), 2) == "n/a (1 of 2 not finite)"
    assert format_number(math.inf) == format_number(-math.inf) == format_number(math.nan) == "n/a"
    assert format_number(123456.0) == "1.235e+05" and format_number(4.85) == "4.850"


# ---------------------------------------------------------------- the written report


def test_files_exist_and_every_plot_is_drawn(report):
    out, files, md, _ = report
    assert files.markdown == out / "report.md" and files.html == out / "report.html"
    assert {p.stem for p in files.plots} == PLOTS
    assert {p.stem for p in (out / "plots").glob("*.png")} == PLOTS
    for path in files.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
        assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"  # for print
        assert f"(plots/{path.name})" in md
    assert "No run has routing pictures" in md  # the results name no run folder with routing_view.json


def test_html_is_self_contained_and_embeds_every_plot(report):
    _, files, _, html = report
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert references and all(ref.startswith("data:image/png;base64,") for ref in references)
    assert "http://" not in without_images(html) and "https://" not in without_images(html)
    for path in files.plots:
        assert base64.b64encode(path.read_bytes()).decode() in html
    assert html.count("<img ") == len(files.plots)


def test_tables_have_every_router_with_mean_std_and_best_first(report):
    _, _, md, html = report
    rows = table(md, "ppl (lower is better) |")  # the headline table: router, seeds, metric
    assert [r[0] for r in rows] == ["xmoe", "topk", "ssr", "sinkhorn"]  # by mean; no difference is resolved
    assert "(best) |" not in md and '<tr class="best"><td>xmoe' not in html
    assert [row_of(rows, label)[1:] for label in ("topk", "xmoe", "ssr")] == [
        ["2", "122.0 ± 2.8"], ["2 of 3", "113.0 ± 4.2"], ["1", "130 (n=1)"]]
    task = table(md, "valid loss | test_metric |")
    assert row_of(task, "topk")[2:] == ["4.850 ± 0.071", "127.0 ± 2.8"]
    assert row_of(task, "xmoe")[2:] == ["4.650 ± 0.071", "118.0 ± 4.2"]
    robust = table(md, "ppl @ substitute L2 |")
    assert row_of(robust, "topk")[2] == "155.0 ± 7.1" and row_of(robust, "xmoe")[2] == "140 (n=1)"
    assert row_of(robust, "sinkhorn")[2] == "missing"  # never evaluated under corruption
    assert "substitute L2 = severity 0.05000" in md
    cost = table(md, "steps | train time (s) | tokens/s |")  # lm-bbc counts tokens
    assert row_of(cost, "topk")[2:] == ["300 ± 0", "61.0 ± 1.4", "1000 ± 0"]


def test_routing_table_reports_missing_routing_data(report):
    _, _, md, _ = report
    rows = table(md, "load CV")
    assert [r[0] for r in rows] == ["xmoe", "topk", "ssr", "sinkhorn"]
    assert row_of(rows, "topk")[2] == "0.350 ± 0.071"
    assert row_of(rows, "xmoe")[2] == "0.3000 (n=1)"  # one of its two finished seeds has routing data
    assert set(row_of(rows, "sinkhorn")[2:]) == {"missing"}


def test_missing_data_section_names_each_gap(report):
    _, _, md, _ = report
    section = md.split("## Missing data")[1].split("\n## ")[0]
    assert "sinkhorn seed 0: no validation curve, routing statistics per layer, routing fluctuation" in section
    assert "xmoe seed 1: no routing statistics per layer" in section and "robustness" in section
    assert "xmoe seed 2 is not in the tables or plots: failed." in section
    assert "topk seed 0: no latent map." in section  # latent is expected once any run has one
    runs = md.split("## Runs")[1].split("\n## ")[0]
    assert "| xmoe | 2 | failed |" in runs and "RuntimeError: boom at step 7" in runs


def test_non_finite_numbers_are_shown_as_na(tmp_path):
    results = make_results()
    results["runs"][1]["final"]["metric"] = math.nan
    results["runs"][5]["routing"]["layers"][0]["load_cv"] = math.inf
    results["runs"][0]["curve"][1]["metric"] = math.nan
    (tmp_path / "results.json").write_text(json.dumps(results))  # NaN / Infinity literals, as json writes them
    files = write_report(tmp_path, vector=False)
    md, html = files.markdown.read_text(), without_images(files.html.read_text())
    for text in (md, html):
        assert not re.search(r"\b(nan|inf|infinity)\b", text, re.IGNORECASE)
    assert row_of(table(md, "ppl"), "topk")[2] == "n/a (1 of 2 not finite)"
    assert row_of(table(md, "load CV"), "ssr")[2] == "n/a (1 of 1 not finite)"
    assert "| topk | 1 | done | 300 | n/a |" in md
    assert table(md, "ppl")[0][0] == "xmoe"


def test_rerender_removes_stale_plots_and_empty_results_render(tmp_path):
    write_report(make_results(), tmp_path, vector=False)
    assert (tmp_path / "plots" / "latent.png").exists()
    results = make_results()
    del results["runs"][5]["latent"]
    files = write_report(results, tmp_path, vector=False)
    assert not (tmp_path / "plots" / "latent.png").exists() and "latent" not in {p.stem for p in files.plots}
    empty = {**make_results(), "runs": []}
    files = write_report(empty, tmp_path / "empty", vector=False)
    md = files.markdown.read_text()
    assert files.plots == [] and "The results hold no runs." in md and "No run recorded a validation curve." in md


def test_bad_input_raises_value_error_naming_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"results\['schema'\] must be one of \(1, 2, 3\), got 4"):
        load_results({**make_results(), "schema": 4})
    with pytest.raises(ValueError, match=r"results\['runs'\] must be a list"):
        load_results({"schema": 1, "runs": [1, 2]})
    with pytest.raises(ValueError, match="results must be a path"):
        load_results(42)
    with pytest.raises(ValueError, match=r"existing results\.json"):
        load_results(tmp_path / "nowhere")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(tmp_path)
    with pytest.raises(ValueError, match="out_dir is required"):
        write_report(make_results(), vector=False)


def test_malformed_fields_count_as_missing_not_crash(tmp_path):
    results = make_results()
    broken = copy.deepcopy(results["runs"][0])
    broken.update(seed=9, curve="oops", routing={"layers": [{"load": "x", "load_cv": "high"}], "fluctuation": 3},
                  robustness=[{"corruption": "substitute", "level": "max"}], final={"metric": None}, latent=[1])
    results["runs"] = [broken]
    files = write_report(results, tmp_path, vector=False)
    md = files.markdown.read_text()
    # only the headline metric column is kept without data; one seed shows (n=1)
    assert table(md, "ppl") == [["topk", "1", "missing"]]
    assert table(md, "steps") == [["topk", "1", "300 (n=1)", "60 (n=1)", "1000 (n=1)"]]
    assert "No run recorded routing statistics." in md
    assert {p.stem for p in files.plots} == set()


def test_cli_report_renders_from_dir(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "report.md").exists()
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "results.json" in capsys.readouterr().err


def test_runs_are_grouped_by_label_not_router(tmp_path):
    results = make_results()
    results["runs"].append({**make_run("topk-k1", 0, 100.0, 4.0), "router": "topk"})
    rows = {row.label: row for row in summarize(results)}
    assert rows["topk"].cells["final.metric"].mean == 122.0 and rows["topk-k1"].cells["final.metric"].n == 1
    assert summarize(results)[0].label == "topk-k1"
    md = write_report(results, tmp_path, vector=False).markdown.read_text()
    assert "| topk-k1 (topk) | 0 | done |" in md
    # the runs table's metric column is titled by the metric, not by the last run's label
    assert "| router | seed | status | steps | ppl | train time (s) |" in md


def test_compact_tables_for_docs(tmp_path, capsys):
    from smoe.workbench.report.export import columns_table, robustness_table

    results = make_results()
    md = columns_table(results, ["final.metric", "routing.load_cv"])
    assert md.splitlines()[0] == "| router | seeds | ppl (lower is better) | load CV |"
    # xmoe: finished seeds with metrics 110 and 116 -> 113 ± 4.243; load CV of its one seed with routing: 0.3
    assert "| xmoe | 2 of 3 | 113.0 ± 4.2 | 0.3000 (n=1) |" in md
    assert "| sinkhorn | 1 | 140 (n=1) | missing |" in md
    with pytest.raises(ValueError, match=r"unknown: \['nope'\]; available: final\.metric"):
        columns_table(results, ["nope"])
    table = robustness_table(results)
    assert table.startswith("ppl by corruption level (substitute L1 = 0.02500, substitute L2 = 0.05000)")
    # topk: levels 0, 1, 2 = (120, 124), (130, 135), (150, 160)
    assert "| topk | substitute | 122.0 ± 2.8 | 132.5 ± 3.5 | 155.0 ± 7.1 |" in table
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path), "--columns", "final.metric"]) == 0
    assert "| router | seeds | ppl (lower is better) |" in capsys.readouterr().out
    assert not (tmp_path / "report.md").exists()  # a table only, no report written
    assert main(["report", str(tmp_path), "--columns", "nope"]) == 2


def test_latex_and_csv_tables(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    assert main(["report", str(tmp_path), "--latex", "--csv"]) == 0
    assert "tables.tex" in capsys.readouterr().out
    tex = (tmp_path / "tables.tex").read_text()
    md = (tmp_path / "report.md").read_text()
    # the report's tables of means, after the verdicts (ppl and its strongest corruption) and the per-seed table
    assert tex.count(r"\begin{tabular}") == md.count("| router | seeds |") + 3 and tex.count(r"\bottomrule") >= 5
    assert tex.index("Verdicts against topk") < tex.index("Per seed:") < tex.index(r"\caption{Results}")
    assert r"xmoe & 2 of 3 & 113.0 $\pm$ 4.2 \\" in tex
    assert r"router & seeds & valid loss & test\_metric \\" in tex  # escaped like every cell
    with open(tmp_path / "tables.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    topk = {r["key"]: r for r in rows if r["router"] == "topk"}
    assert (topk["final.metric"]["table"], topk["final.metric"]["quantity"]) == ("Results", "ppl (lower is better)")
    assert float(topk["final.metric"]["mean"]) == 122.0 and float(topk["final.metric"]["std"]) == math.sqrt(8)
    assert topk["final.metric"]["n"] == "2"  # raw numbers, not the rounded text
    sinkhorn = next(r for r in rows if r["router"] == "sinkhorn" and r["key"] == "robust.substitute@2")
    assert (sinkhorn["mean"], sinkhorn["n"]) == ("", "0")  # never evaluated under corruption


# ---------------------------------------------------------------- hostile results files; one writer


def test_labels_are_shown_never_run_in_markdown_and_csv(tmp_path):
    results = make_results()
    for run, label in zip(results["runs"], ["<script>alert(1)</script>", "<script>alert(1)</script>",
                                            "=HYPERLINK(\"http://x\")", "=HYPERLINK(\"http://x\")"]):
        run["label"] = run["router"] = label
    results["runs"][4]["label"] = results["runs"][4]["router"] = "=HYPERLINK(\"http://x\")"
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path), "--csv"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "<script" not in md and "&lt;script>alert(1)&lt;/script>" in md
    assert "| =HYPERLINK" not in md and "| '=HYPERLINK(\"http://x\") |" in md
    assert "<script" not in (tmp_path / "report.html").read_text()
    with open(tmp_path / "tables.csv", newline="") as f:
        labels = {row["router"] for row in csv.DictReader(f)}
    assert "'=HYPERLINK(\"http://x\")" in labels and not any(label.startswith("=") for label in labels)


@pytest.mark.parametrize("cell, safe", [
    ("=1+2", "'=1+2"), ("@SUM(A1)", "'@SUM(A1)"), ("+cmd", "'+cmd"), ("-cmd|' /C calc'!A0", "'-cmd|' /C calc'!A0"),
    ("\t=x", "'\t=x"), ("-0.5", "-0.5"), ("+3 (n=1)", "+3 (n=1)"), ("-.5", "-.5"), ("topk", "topk"), ("", ""),
])
def test_safe_cell(cell, safe):
    from smoe.workbench.document import safe_cell

    assert safe_cell(cell) == safe


def test_report_refuses_a_folder_another_process_writes_and_an_out_that_is_a_file(tmp_path, capsys):
    from tests.workbench.test_run_folder import _hold_until_killed

    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    (tmp_path / "file").write_text("x")
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert f"smoe report: error: {tmp_path / 'file'} is a file, not a folder" in err and err.count("\n") == 1
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_until_killed, args=(tmp_path, ready), daemon=True)
    holder.start()
    try:
        assert ready.wait(30)
        assert main(["report", str(tmp_path)]) == 2
        assert f"{tmp_path} is being written by another smoe process (pid {holder.pid})" in capsys.readouterr().err
        assert not (tmp_path / "report.md").exists() and not (tmp_path / "plots").exists()
    finally:
        holder.kill()
        holder.join()
    assert main(["report", str(tmp_path)]) == 0
