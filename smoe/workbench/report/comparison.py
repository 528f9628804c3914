"""Comparison report: `summarize` a results.json per router label (mean +- std over seeds) and `write_report`
a report.md (tables, figures in plots/ as PNG and PDF, the routing pictures of `workbench.report.routing_plots`) and a
self-contained report.html (the same content, PNGs inlined). Every table fits a 1400-pixel page: a headline table,
then tables by topic (`TOPICS`) of at most MAX_COLUMNS value columns; numbers in one format (`workbench.numbers`).

Numbers are never invented: a quantity no run of a router recorded is "missing", a NaN or infinite one is "n/a"
(with how many seeds were not finite), and std is the sample std (ddof 1), absent for one seed ("n=1").
Schema of the input: `smoe.workbench.results.schema`. `smoe report DIR [--out OUT]` re-renders from DIR/results.json.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smoe.workbench.document import Block, Bullets, Code, Heading, Image, Table, Text, render_html, render_markdown
from smoe.workbench.measure.rule import Margin
from smoe.workbench.numbers import NOT_FINITE, format_number, format_spread
from smoe.workbench.report import plots
from smoe.workbench.report.caveats import caveats, contention
from smoe.workbench.report.evidence import evidence_blocks
from smoe.workbench.report.routing_plots import report_pictures
from smoe.workbench.report.tuning_section import tuning_blocks
from smoe.workbench.report.verdict_section import bottom_line, verdict_blocks
from smoe.workbench.results.columns import column_title, run_values, strongest_levels
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
from smoe.workbench.results.verdicts import RECORDED, beats_every_other, with_statistics
from smoe.workbench.tasks import available_tasks, get_task
from smoe.workbench.train.run_folder import hold_folder

MISSING = "missing"
HEADLINE = "final.metric"
# the tables below the headline one: title -> column keys in order (a key ending in "." takes every key with that
# prefix that no other table names); each table is cut into parts of at most MAX_COLUMNS columns to fit the page
TOPICS = {
    "Task metrics": ("final.valid_metric", "final.valid_loss", "final."),
    "Robustness": ("robust.",),
    "Cost": ("steps", "train_time_s", "tokens_per_s", "final.eval_time_s"),
    "Routing: balance": ("routing.load_cv", "routing.max_over_mean", "routing.dropped_fraction",
                         "routing.active_experts", "final.experts_per_token"),
    "Routing: confidence and representation": ("routing.entropy", "routing.margin", "routing.effective_rank_input",
                                               "routing.effective_rank_router"),
    "Routing: specialization and stability": ("routing.nmi.", "fluctuation.top1", "fluctuation.topk_set",
                                              "coactivation.nmi", "sensitivity"),
}
MAX_COLUMNS = 6

# ---------------------------------------------------------------- per router


@dataclass(frozen=True)
class Stat:
    """One quantity over the seeds that recorded it: mean, sample std (ddof 1; None for n=1), n values, of
    which `nonfinite` were NaN or infinite (then mean and std are NaN)."""

    mean: float
    std: float | None
    n: int
    nonfinite: int = 0

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        n = len(values)
        if n == 0:
            raise ValueError("values must hold at least one number")
        bad = sum(not math.isfinite(v) for v in values)
        if bad:
            return cls(math.nan, math.nan if n > 1 else None, n, bad)
        return cls(statistics.fmean(values), statistics.stdev(values) if n > 1 else None, n)


@dataclass
class RouterRow:
    """One router label: how many runs it has and finished, and a Stat per column it has data for."""

    label: str
    runs: int
    finished: int
    cells: dict[str, Stat] = field(default_factory=dict)
    best: bool = False


def summarize(results: str | os.PathLike | Mapping) -> list[RouterRow]:
    """Rows per router label over its finished runs, best first by the headline metric's direction.

    Rows without a finite mean metric come last; with no direction given, rows are in label order. The first row
    is marked best only when its metric is resolved better than every other's (`verdicts.beats_every_other`).
    """
    results = load_results(results)
    _, higher_is_better = metric_spec(results)
    groups = group_runs(results)
    strongest = strongest_levels([run for run in results["runs"] if is_finished(run)])
    rows = []
    for label, runs in groups.items():
        done = [run for run in runs if is_finished(run)]
        per_run = [run_values(run, strongest) for run in done]
        keys = dict.fromkeys(key for values in per_run for key in values)
        rows.append(RouterRow(label=label, runs=len(runs), finished=len(done),
                              cells={key: Stat.of([v[key] for v in per_run if key in v]) for key in keys}))

    def rank(row: RouterRow) -> tuple:
        stat = row.cells.get("final.metric")
        if higher_is_better is None or stat is None or stat.nonfinite:
            return (1, 0.0, row.label)
        return (0, -stat.mean if higher_is_better else stat.mean, row.label)

    rows.sort(key=rank)
    if rows and rank(rows[0])[0] == 0:
        rows[0].best = beats_every_other(results, rows[0].label)
    return rows


# ---------------------------------------------------------------- formatting


def format_stat(stat: Stat | None, seeds: int) -> str:
    """ "mean ± std" (`numbers.format_spread`: the std to two significant figures, the mean to the same place),
    "value (n=1)", "n/a (k of n not finite)" or "missing"; "(n=m)" when only m < seeds recorded it."""
    if stat is None:
        return MISSING
    if stat.nonfinite:
        return f"{NOT_FINITE} ({stat.nonfinite} of {stat.n} not finite)"
    text = format_spread(stat.mean, stat.std)
    return f"{text} (n={stat.n})" if stat.n == 1 or stat.n != seeds else text


def _format_value(value: object) -> str:
    x = number(value)
    return MISSING if x is None else format_number(x)


def throughput_unit(results: Mapping) -> str:
    """What a run's throughput (results.json `tokens_per_s`) counts: the task's unit, "samples" when unknown."""
    task = results.get("task")
    return get_task(task).throughput_unit if isinstance(task, str) and task in available_tasks() else "samples"


def table_columns(rows: Sequence[RouterRow]) -> list[tuple[str, list[str]]]:
    """(title, column keys) of every table below the headline one that has data, in TOPICS order, each cut into
    parts of at most MAX_COLUMNS columns."""
    keys = [key for key in dict.fromkeys(key for row in rows for key in row.cells) if key != HEADLINE]
    named = {pattern for patterns in TOPICS.values() for pattern in patterns if not pattern.endswith(".")}
    tables = []
    for title, patterns in TOPICS.items():
        chosen = []
        for pattern in patterns:
            if pattern.endswith("."):
                chosen += sorted(k for k in keys if k.startswith(pattern) and k not in named and k not in chosen)
            elif pattern in keys:
                chosen.append(pattern)
        parts = [chosen[i:i + MAX_COLUMNS] for i in range(0, len(chosen), MAX_COLUMNS)]
        tables += [(title + (f" ({i + 1} of {len(parts)})" if len(parts) > 1 else ""), part)
                   for i, part in enumerate(parts)]
    return tables


# ---------------------------------------------------------------- the document


def _direction(higher_is_better: bool | None) -> str:
    return {True: "higher is better", False: "lower is better",
            None: "direction not recorded, so no router is marked best"}[higher_is_better]


def _header(results: Mapping, rows: Sequence[RouterRow]) -> list[Block]:
    name, higher_is_better = metric_spec(results)
    task, preset = results.get("task"), results.get("preset")
    title = f"Router comparison: {task if isinstance(task, str) else 'unknown task'}"
    blocks: list[Block] = [Heading(title + (f" ({preset})" if isinstance(preset, str) else ""), 1)]
    runs = results["runs"]
    status = [run.get("status") if isinstance(run.get("status"), str) else "unknown" for run in runs]
    counts = ", ".join(f"{status.count(s)} {s}" for s in dict.fromkeys(status))
    blocks.append(Text(f"Headline metric: {name} ({_direction(higher_is_better)}). "
                       f"{len(runs)} runs of {len(rows)} routers" + (f": {counts}." if runs else ".")))
    machine = results.get("machine")
    created = results.get("created")
    facts = [f"Created {created}" if isinstance(created, str) else "Creation time not recorded",
             "machine: " + ", ".join(f"{k} {v}" for k, v in machine.items())
             if isinstance(machine, Mapping) and machine else "machine not recorded"]
    blocks.append(Text("; ".join(facts) + "."))
    if isinstance(results.get("command"), str):
        blocks.append(Code(results["command"]))
    return blocks


def stat_table(rows: Sequence[RouterRow], keys: Sequence[str], results: Mapping, mark: bool = True) -> Table:
    """The table of `keys` per router; mark: emphasise the best row (the headline table does, topic tables keep
    only the "(best)" in its name, so that a cost or routing column is not read as best)."""
    name, higher_is_better = metric_spec(results)
    unit = throughput_unit(results)
    header = ["router", "seeds", *(f"{unit}/s" if k == "tokens_per_s" else column_title(k, name, higher_is_better)
                                   for k in keys)]
    body = [[row.label + (" (best)" if row.best else ""),
             str(row.finished) if row.finished == row.runs else f"{row.finished} of {row.runs}",
             *(format_stat(row.cells.get(k), row.finished) for k in keys)] for row in rows]
    return Table(header, body, marked={i for i, row in enumerate(rows) if row.best and mark})


def _severities(results: Mapping, keys: Sequence[str]) -> str:
    """ "substitute L5 = severity 0.4, ..." for the robustness columns."""
    parts = []
    for key in keys:
        name, level = key[len("robust."):].rsplit("@", 1)
        severity = next((number(e.get("severity")) for run in results["runs"] for e in records(run, "robustness")
                         if e.get("corruption") == name and number(e.get("level")) == float(level)), None)
        parts.append(f"{name} L{level}" + (f" = severity {format_number(severity)}" if severity is not None else ""))
    return ", ".join(parts)


NOTES = {
    "Routing: balance": "Per-layer quantities are means over MoE layers.",
    "Routing: specialization and stability": "NMI: specialization of the top-1 expert to each label (mean over "
    "layers); fluctuation: the last recorded checkpoint (fraction of held-out tokens whose routing changed); "
    "co-activation NMI: mean over consecutive layer pairs; top-expert sensitivity: metric with each token's top "
    "expert removed minus the clean metric, mean over layers.",
}


def report_tables(results: Mapping, rows: Sequence[RouterRow]) -> list[tuple[str, str, list[str]]]:
    """(title, note, column keys) of every table: the headline one ("Results"), then `table_columns`."""
    tables = [("Results", "Mean ± std over each router's finished seeds (sample std, ddof 1; the std to two "
                          "significant figures, the mean to the same place); one seed shows its value with (n=1); "
                          "(n=m) marks a quantity only m of the router's seeds recorded. missing: not recorded; "
                          "n/a: not a finite number (never averaged away). Rows are sorted by mean, best first; "
                          "(best) marks a router only when its metric is resolved better than every other's "
                          "(paired by seed, the verdict rule over the others as one family).", [HEADLINE])]
    for title, keys in table_columns(rows):
        robust = [k for k in keys if k.startswith("robust.")]
        note = (f"The metric at the strongest level evaluated ({_severities(results, robust)})." if robust
                else NOTES.get(title.split(" (")[0], ""))
        tables.append((title, note, keys))
    return tables


def _tables(results: Mapping, rows: Sequence[RouterRow]) -> list[Block]:
    if not rows:
        return [Heading("Results"), Text("The results hold no runs.")]
    blocks: list[Block] = []
    crowded = contention(results)
    for i, (title, note, keys) in enumerate(report_tables(results, rows)):
        blocks += [Heading(title, 2 if i == 0 else 3), *([Text(note)] if note else []),
                   *([Bullets([crowded], warning=True)] if crowded and title.startswith("Cost") else []),
                   stat_table(rows, keys, results, mark=i == 0)]
    if not any(title.startswith("Routing") for title, _ in table_columns(rows)):
        blocks.append(Text("No run recorded routing statistics."))
    return blocks


def _run_name(run: Mapping) -> str:
    return f"{run_label(run)} seed {run.get('seed', '?')}"


def _runs_table(results: Mapping) -> list[Block]:
    name, _ = metric_spec(results)
    body = []
    for run in results["runs"]:
        options = run.get("options")
        error = run.get("error")
        router = run.get("router")
        shown = run_label(run) + (f" ({router})" if isinstance(router, str) and router != run_label(run) else "")
        body.append([shown, str(run.get("seed", "?")),
                     run["status"] if isinstance(run.get("status"), str) else "unknown",
                     _format_value(run.get("steps")), _format_value(get(run, "final", "metric")),
                     _format_value(run.get("train_time_s")),
                     json.dumps(options, sort_keys=True) if isinstance(options, Mapping) and options else "",
                     str(run.get("run_dir", "")), " ".join(str(error).split())[:300] if error else ""])
    header = ["router", "seed", "status", "steps", name, "train time (s)", "options", "run dir", "error"]
    return [Heading("Runs"), Table(header, body)] if body else []


# what every finished run should have recorded: name -> test
EXPECTED: dict[str, Callable[[Mapping], bool]] = {
    "validation curve": lambda run: bool(records(run, "curve")),
    "final metric": lambda run: number(get(run, "final", "metric")) is not None,
    "valid loss": lambda run: number(get(run, "final", "valid_loss")) is not None,
    "routing statistics per layer": lambda run: bool(records(run, "routing", "layers")),
    "routing fluctuation": lambda run: bool(records(run, "routing", "fluctuation")),
    "co-activation": lambda run: bool(records(run, "routing", "coactivation")),
    "top-expert sensitivity": lambda run: bool(records(run, "routing", "sensitivity")),
    "robustness": lambda run: bool(records(run, "robustness")),
    "train time": lambda run: number(run.get("train_time_s")) is not None,
    "throughput": lambda run: number(run.get("tokens_per_s")) is not None,
}
OPTIONAL = {"latent map": lambda run: isinstance(run.get("latent"), Mapping)}  # expected once any run has it


def _missing(results: Mapping) -> list[Block]:
    runs = results["runs"]
    done = [run for run in runs if is_finished(run)]
    expected = {**EXPECTED, **{k: test for k, test in OPTIONAL.items() if any(map(test, done))}}
    nowhere = [what for what, test in expected.items() if done and not any(map(test, done))]
    items = [f"No run recorded: {', '.join(nowhere)}."] if nowhere else []
    for run in done:
        lacks = [what for what, test in expected.items() if what not in nowhere and not test(run)]
        if lacks:
            items.append(f"{_run_name(run)}: no {', '.join(lacks)}.")
    items += [f"{_run_name(run)} is not in the tables or plots: {run.get('status')}." for run in runs
              if not is_finished(run)]
    return [Heading("Missing data"), Bullets(items) if items else Text("Every run recorded every quantity.")]


PLOT_STEMS = ("curves", "final_metric", "load", "fluctuation", "robustness", "coactivation", "latent")


def _plots(results: Mapping, rows: Sequence[RouterRow], out: Path, vector: bool) -> list[Block]:
    """Draw and save every plot under out/plots; an Image block for each, a sentence where data is missing."""
    name, _ = metric_spec(results)
    by_label = group_runs(results)
    groups = {row.label: [run for run in by_label[row.label] if is_finished(run)] for row in rows}
    band = "mean over seeds, band from min to max over seeds"
    figures = {  # stem: (title, figure, caption, sentence when absent; None: leave the section out)
        "curves": ("Validation curves", plots.validation_curves(groups, name),
                   f"Validation {name} and loss over training: {band}.", "No run recorded a validation curve."),
        "final_metric": ("Final metric", plots.final_metric(groups, name),
                         f"Final {name}: one point per seed; diamond and bar: mean ± std.",
                         "No run recorded a finite final metric."),
        "load": ("Expert load", plots.load_heatmaps(groups),
                 "Fraction of routed pairs per expert and layer, mean over seeds.", "No run recorded expert load."),
        "fluctuation": ("Routing fluctuation", plots.fluctuation(groups),
                        f"Fraction of held-out tokens whose routing changed since the previous checkpoint, mean over "
                        f"layers: {band}.", "No run recorded routing fluctuation."),
        "robustness": ("Robustness", plots.robustness(groups, name),
                       f"{name} against corruption level (0 = clean): {band}.", "No run recorded robustness."),
        "coactivation": ("Cross-layer co-activation", plots.coactivation(groups),
                         "Experts of the first recorded layer pair: row i, column j = how often a token of expert i "
                         "goes to expert j in the next layer, mean over seeds.", "No run recorded co-activation."),
        "latent": ("Latent map", plots.latent_map(groups), "2-D map (t-SNE) of the VAE latent, coloured by the "
                   "top-1 expert.", None),
    }
    blocks: list[Block] = [Heading("Plots"), *([Text("Every figure is also in plots/ as a PDF (vector, for print).")]
                                               if vector else [])]
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for stem in PLOT_STEMS:
        title, fig, caption, absent = figures[stem]
        path = out / "plots" / f"{stem}.png"
        if plots.save_or_remove(fig, path, vector):
            blocks += [Heading(title, 3), Image(path.relative_to(out), caption)]
        elif absent:
            blocks += [Heading(title, 3), Text(absent)]
    return blocks


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    plots: list[Path]


def write_report(results: str | os.PathLike | Mapping, out_dir: str | os.PathLike | None = None,
                 baseline: str | None = None, vector: bool = True,
                 margin: Margin | Literal["recorded"] | None = RECORDED) -> ReportFiles:
    """Write out_dir/report.md, out_dir/report.html and out_dir/plots/ (PNG, and PDF unless vector=False) from a
    comparison's results, with the routing pictures of each router's first seed (read from its run folder,
    `routing_view.json`).

    results: a results dict, a results.json path or the directory holding it; out_dir defaults to that
    directory (required for a dict, whose run folders are then read relative to out_dir). The report opens with
    the verdicts against `baseline` (default: the recorded one, else the first entry) with `margin` (default: the
    recorded one), read from results.json when it was judged that way, else judged again from the runs
    (`verdicts.with_statistics`: version 1 and 2 files always are). out_dir is held while the files are written (one
    writer: a running `smoe compare` into it is a FolderBusyError).
    """
    if isinstance(results, (str, os.PathLike)):
        base = Path(results) if Path(results).is_dir() else Path(results).parent
    elif out_dir is None:
        raise ValueError("out_dir is required when results is a dict, not a path")
    else:
        base = Path(out_dir)
    out = Path(out_dir) if out_dir is not None else base
    results = with_statistics(results, baseline, margin=margin)
    with hold_folder(out):
        return _write_report(results, base, out, vector)


def _write_report(results: Mapping, base: Path, out: Path, vector: bool) -> ReportFiles:
    rows = summarize(results)
    by_label = group_runs(results)
    finished = {row.label: [run for run in by_label[row.label] if is_finished(run)] for row in rows}
    title, *header = _header(results, rows)
    warnings = caveats(results)
    first_screen = [title, *bottom_line(results),
                    *([Heading("Warnings"), Bullets(warnings, warning=True)] if warnings else []),
                    *verdict_blocks(results, out, vector)]
    blocks = [*first_screen, *evidence_blocks(results, out, vector), *tuning_blocks(results, out, vector),
              Heading("The comparison"), *header,
              *_tables(results, rows), *_runs_table(results), *_missing(results), *_plots(results, rows, out, vector),
              *report_pictures(finished, base, out, vector)]
    files = ReportFiles(out / "report.md", out / "report.html",
                        [out / b.path for b in blocks if isinstance(b, Image)])
    files.markdown.write_text(render_markdown(blocks), encoding="utf-8")
    files.html.write_text(render_html(blocks, blocks[0].text, out), encoding="utf-8")
    return files
