"""A comparison's tables outside the report: compact Markdown tables for docs (`smoe report --columns`,
`--robustness`), LaTeX (booktabs) and CSV (`smoe report --latex`, `--csv`).

The LaTeX tables are the report's tables with the same numbers and text; the CSV holds one row per (table, router,
quantity) with the raw mean, std, number of seeds and how many were not finite, for plotting elsewhere; a text cell
that a spreadsheet would run as a formula is quoted (`smoe.workbench.document.safe_cell`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from smoe.workbench.document import Table, render_markdown, safe_cell
from smoe.workbench.numbers import format_number
from smoe.workbench.report.comparison import MISSING, Stat, format_stat, report_tables, stat_table, summarize
from smoe.workbench.results.schema import group_runs, is_finished, load_results, metric_spec, number, records
from smoe.workbench.train.run_folder import hold_folder

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                 "→": r"$\rightarrow$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def render_latex(tables: Sequence[tuple[str, Table]]) -> str:
    """One booktabs `table` environment per (caption, table); marked rows in bold."""
    out = ["% smoe report tables; needs \\usepackage{booktabs}"]
    for caption, table in tables:
        cols = "l" + "r" * (len(table.header) - 1)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
                 rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
                 " & ".join(latex_escape(c) for c in table.header) + r" \\", r"\midrule"]
        for i, row in enumerate(table.rows):
            cells = [latex_escape(c) for c in row]
            if i in table.marked:
                cells = [rf"\textbf{{{c}}}" for c in cells]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def write_tables(results: str | os.PathLike | Mapping, out_dir: str | os.PathLike, latex: bool = False,
                 csv_file: bool = False) -> list[Path]:
    """Write out_dir/tables.tex (latex) and out_dir/tables.csv (csv_file) of the report's tables; their paths."""
    results = load_results(results)
    rows = summarize(results)
    tables = [(title, keys, stat_table(rows, keys, results, mark=i == 0))
              for i, (title, _, keys) in enumerate(report_tables(results, rows))]
    written = []
    with hold_folder(out_dir) as out:
        if latex:
            written.append(out / "tables.tex")
            written[-1].write_text(render_latex([(title, table) for title, _, table in tables]), encoding="utf-8")
        if csv_file:
            written.append(out / "tables.csv")
            with open(written[-1], "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["table", "router", "quantity", "key", "mean", "std", "n", "not_finite"])
                for title, keys, table in tables:
                    for row in rows:
                        for i, key in enumerate(keys):
                            stat = row.cells.get(key)
                            values = (["", "", 0, 0] if stat is None else
                                      [stat.mean, "" if stat.std is None else stat.std, stat.n, stat.nonfinite])
                            writer.writerow([safe_cell(c) for c in (title, row.label, table.header[2 + i], key)]
                                            + values)
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
