"""A comparison's tables outside the report: compact Markdown tables for docs (`smoe report --columns`,
`--robustness`), LaTeX (booktabs) and CSV (`smoe report --latex`, `--csv`).

tables.tex: the verdict tables (difference with its interval, % of the baseline, adjusted p and test, verdict, MDD,
seeds needed, seeds), a per-seed table of the headline metric (each run, the baseline's value at its seed, the
paired difference), then the report's tables of mean ± std, with the same numbers and text as the report.
CSV, raw numbers for plotting elsewhere: tables.csv (one row per table, router and quantity: mean, std, seeds, not
finite), verdicts.csv (one row per compared column and entry: the recorded comparison) and seeds.csv (one row per
run: its headline metric, the baseline's at its seed, the difference); a text cell that a spreadsheet would run as a
formula is quoted (`smoe.workbench.document.safe_cell`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from smoe.workbench.document import Table, render_markdown, safe_cell
from smoe.workbench.measure.rule import Margin
from smoe.workbench.numbers import format_number, is_finite
from smoe.workbench.report.comparison import MISSING, Stat, format_stat, report_tables, stat_table, summarize
from smoe.workbench.report.verdict_section import HEADLINE, confidence, relative, units, verdict_table
from smoe.workbench.results.schema import (
    get,
    group_runs,
    is_finished,
    load_results,
    metric_spec,
    number,
    records,
    run_label,
)
from smoe.workbench.results.verdicts import RECORDED, seed_values, strongest_corruption, with_statistics
from smoe.workbench.train.run_folder import hold_folder

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                 "→": r"$\rightarrow$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "−": "-",
                 "Δ": r"$\Delta$", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def render_latex(tables: Sequence[tuple[str, Table]]) -> str:
    """One booktabs `table` environment per (caption, table), shrunk to the line width when wider (graphicx's
    resizebox); marked rows in bold."""
    out = ["% smoe report tables; needs \\usepackage{booktabs} and \\usepackage{graphicx}"]
    for caption, table in tables:
        cols = "l" + "r" * (len(table.header) - 1)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
                 r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
                 rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
                 " & ".join(latex_escape(c) for c in table.header) + r" \\", r"\midrule"]
        for i, row in enumerate(table.rows):
            cells = [latex_escape(c) for c in row]
            if i in table.marked:
                cells = [rf"\textbf{{{c}}}" for c in cells]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def seed_rows(results: Mapping) -> tuple[list[str], list[list[str]], list[list[object]]]:
    """The per-seed table of the headline metric: header, text rows and raw rows (entry, seed, status, value, the
    baseline's value at that seed, difference), one per run in entry then seed order."""
    name, _ = metric_spec(results)
    baseline = results["baseline"]
    base = seed_values(results).get(baseline, {})
    order = {label: i for i, label in enumerate(results["entries"])}
    runs = sorted(results["runs"], key=lambda r: (order.get(run_label(r), len(order)), str(r.get("seed"))))
    text, raw = [], []
    for run in runs:
        seed, value = run.get("seed"), number(get(run, "final", "metric"))
        status = run["status"] if isinstance(run.get("status"), str) else "done"
        paired = base.get(seed, {}).get(HEADLINE) if run_label(run) != baseline else None
        difference = value - paired if is_finite(value) and is_finite(paired) and is_finished(run) else None
        raw.append([run_label(run), seed, status, value, paired, difference])
        text.append([run_label(run), str(seed), status, format_number(value) if value is not None else MISSING,
                     "" if paired is None else format_number(paired),
                     "" if difference is None else format_number(difference, True)])
    header = ["entry", "seed", "status", name, f"{baseline} at this seed", "difference"]
    return header, text, raw


def verdict_tables(results: Mapping) -> list[tuple[str, Table]]:
    """(caption, table) of the headline verdicts, the strongest corruption's, and the per-seed table."""
    if len(results["entries"]) < 2:
        return []
    keys = [HEADLINE, *([c] if (c := strongest_corruption(results, results["baseline"])) else [])]
    out = [(f"Verdicts against {results['baseline']}: {units(results, key)}", verdict_table(results, key))
           for key in keys if results["comparisons"].get(key)]
    header, text, _ = seed_rows(results)
    return [*out, (f"Per seed: the test {metric_spec(results)[0]} of every run, the baseline's at the same seed and "
                   "the paired difference", Table(header, text))]


VERDICT_FIELDS = ("n", "mean", "sd", "relative", "ci_low", "ci_high", "level", "test", "p_value", "p_adjusted",
                  "verdict", "note", "family", "family_size", "adjustment", "alpha", "margin", "margin_spec", "d_z",
                  "prob_improvement", "prob_improvement_low", "prob_improvement_high", "mdd", "seeds_needed")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """path as a CSV file of header and rows (None as an empty cell, text through `safe_cell`); path."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else safe_cell(v) if isinstance(v, str) else v for v in row]
                          for row in rows])
    return path


def write_tables(results: str | os.PathLike | Mapping, out_dir: str | os.PathLike, latex: bool = False,
                 csv_file: bool = False, baseline: str | None = None,
                 margin: Margin | Literal["recorded"] | None = RECORDED) -> list[Path]:
    """Write out_dir/tables.tex (latex) and out_dir/tables.csv, verdicts.csv, seeds.csv (csv_file) of the
    comparison's verdicts against `baseline` with `margin` (`verdicts.with_statistics`; default: the recorded
    ones); their paths."""
    results = with_statistics(load_results(results), baseline, margin=margin)
    rows = summarize(results)
    tables = [(title, keys, stat_table(rows, keys, results, mark=i == 0))
              for i, (title, _, keys) in enumerate(report_tables(results, rows))]
    written = []
    with hold_folder(out_dir) as out:
        if latex:
            written.append(out / "tables.tex")
            captioned = [*verdict_tables(results), *((title, table) for title, _, table in tables)]
            written[-1].write_text(render_latex(captioned), encoding="utf-8")
        if csv_file:
            stats = []
            for title, keys, table in tables:
                for row in rows:
                    for i, key in enumerate(keys):
                        stat = row.cells.get(key)
                        values = (["", "", 0, 0] if stat is None else
                                  [stat.mean, "" if stat.std is None else stat.std, stat.n, stat.nonfinite])
                        stats.append([title, row.label, table.header[2 + i], key, *values])
            written.append(write_csv(out / "tables.csv", ["table", "router", "quantity", "key", "mean", "std", "n",
                                                           "not_finite"], stats))
            verdicts = [[key, label, results["baseline"], confidence(c), *(relative(c) or (None, None, None))[1:],
                         *(c.get(f) for f in VERDICT_FIELDS), " ".join(map(str, c.get("seeds") or [])),
                         " ".join(map(str, c.get("diverged_seeds") or []))]
                        for key, entries in results["comparisons"].items() for label, c in entries.items()]
            written.append(write_csv(out / "verdicts.csv", ["column", "entry", "baseline", "confidence",
                                                             "relative_low", "relative_high", *VERDICT_FIELDS, "seeds",
                                                             "diverged_seeds"], verdicts))
            *_, raw = seed_rows(results)
            written.append(write_csv(out / "seeds.csv", ["entry", "seed", "status", "metric", "baseline_metric",
                                                          "difference"], raw))
    return written


# ---------------------------------------------------------------- compact tables (smoe report --columns / --robustness)


def columns_table(results: str | os.PathLike | Mapping, keys: Sequence[str]) -> str:
    """A Markdown table of chosen columns per router (mean ± std over seeds, as in the report): keys as in
    `run_values` ("final.metric", "routing.load_cv", "fluctuation.top1", "robust.noise@5", ...)."""
    results = load_results(results)
    rows = summarize(results)
    available = list(dict.fromkeys(key for row in rows for key in row.cells))
    unknown = [key for key in keys if key not in available]
    if unknown or not keys:
        raise ValueError(f"columns must name recorded quantities; unknown: {unknown}; available: "
                         f"{', '.join(available)}")
    return render_markdown([stat_table(rows, keys, results)])


def robustness_table(results: str | os.PathLike | Mapping) -> str:
    """A Markdown table of the metric at every level of every corruption (and capacity sweep), per router: one
    row per (router, corruption), one column per level, mean ± std over the finished seeds."""
    results = load_results(results)
    name, _ = metric_spec(results)
    by_level: dict[tuple[str, str], dict[float, list[float]]] = {}
    severity: dict[tuple[str, float], float] = {}
    for label, runs in group_runs(results).items():
        for run in (r for r in runs if is_finished(r)):
            for e in records(run, "robustness"):
                level, metric = number(e.get("level")), number(e.get("metric"))
                if isinstance(e.get("corruption"), str) and level is not None and metric is not None:
                    by_level.setdefault((label, e["corruption"]), {}).setdefault(level, []).append(metric)
                    if number(e.get("severity")) is not None:
                        severity[e["corruption"], level] = number(e["severity"])
    if not by_level:
        raise ValueError("no run recorded robustness")
    levels = sorted({level for values in by_level.values() for level in values})
    body = [[label, corruption, *(format_stat(Stat.of(v[level]), len(v[level])) if level in v else MISSING
                                  for level in levels)]
            for (label, corruption), v in by_level.items()]
    header = ["router", "corruption", *(f"L{level:g}" for level in levels)]
    legend = ", ".join(f"{c} L{level:g} = {format_number(sev)}" for (c, level), sev in severity.items() if level)
    return f"{name} by corruption level ({legend})\n\n" + render_markdown([Table(header, body)])
