"""`smoe report DIR1 DIR2 ... --out DIR`: several comparisons (tasks) that share entries, read together.

- Normalised score of an entry at a seed of a task: its headline metric minus the task baseline's at the same seed,
  in % of the baseline's mean over the paired seeds, signed so that + is better (lower perplexity, higher accuracy).
  The baseline scores 0 by construction.
- Per task: every entry's verdict there (`workbench.results.verdicts`, unchanged) and its mean normalised score.
- Aggregate over tasks, as rliable defines it (`workbench.measure.aggregate`): the interquartile mean of the
  normalised scores of all (task, seed) pairs, with a stratified bootstrap interval (seeds resampled within each task);
  the probability of improvement over the baseline, the mean over tasks of the share of (entry run, baseline run)
  pairs where the entry's is better, with its stratified bootstrap interval.
- A critical-difference diagram of the routers in every task: ranks within blocks, a block being a (task, seed)
  where every one of them finished with a finite metric; the Friedman test over the blocks and the Nemenyi critical
  difference (Demšar 2006). Blocks are seeds as well as tasks, so it speaks for these tasks, not for tasks at large.

`smoe claims` calls `write_across` over the comparisons it judged.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from smoe.workbench.document import Block, Bullets, Details, Heading, Image, Table, Text, render_html, render_markdown
from smoe.workbench.measure.aggregate import friedman, probability_of_improvement, stratified_bootstrap
from smoe.workbench.measure.rule import Margin
from smoe.workbench.numbers import format_number, is_finite
from smoe.workbench.report.across_plots import critical_difference, normalised_scores
from smoe.workbench.report.caveats import caveats
from smoe.workbench.report.export import render_latex, write_csv
from smoe.workbench.report.plots import interval_rows, save_or_remove
from smoe.workbench.results.schema import entry_labels, load_results, metric_spec
from smoe.workbench.results.verdicts import RECORDED, SeedValues, seed_values, with_statistics
from smoe.workbench.train.run_folder import hold_folder

HEADLINE = "final.metric"
SCORE = "normalised score (% of the baseline, + = better)"


@dataclass
class TaskResults:
    """One comparison read as a task: its display name, results with statistics and per-seed values."""

    name: str
    results: dict
    values: SeedValues

    @property
    def baseline(self) -> str:
        return self.results["baseline"]

    @property
    def direction(self) -> bool | None:
        return metric_spec(self.results)[1]

    def oriented(self, label: str) -> dict[int, float]:
        """seed -> the label's headline metric, negated when lower is better (higher = better)."""
        sign = 1.0 if self.direction else -1.0
        return {s: sign * v[HEADLINE] for s, v in self.values.get(label, {}).items() if is_finite(v.get(HEADLINE))}


def load_tasks(sources: Sequence[str | os.PathLike | Mapping], baseline: str | None = None,
               margin: Margin | Literal["recorded"] | None = RECORDED) -> list[TaskResults]:
    """The comparisons of `sources` (results dicts, results.json paths or their folders) with their verdicts against
    `baseline` (None: each comparison's own) with `margin` (default: each one's recorded margin); two comparisons of
    one task are told apart by their folder."""
    if len(sources) < 2:
        raise ValueError(f"sources must name at least two comparisons to read across tasks, got {len(sources)}")
    loaded = []
    for i, source in enumerate(sources):
        results = load_results(source)
        labels = entry_labels(results)
        if baseline is not None and baseline not in labels:
            raise ValueError(f"baseline {baseline!r} is not an entry of comparison {source!r} (its entries: "
                             f"{', '.join(labels)})")
        results = with_statistics(results, baseline, margin=margin)
        folder = Path(source).name if isinstance(source, (str, os.PathLike)) else f"#{i + 1}"
        loaded.append((str(results.get("task", "task")), folder, results))
    names = [task for task, _, _ in loaded]
    return [TaskResults(f"{task} ({folder})" if names.count(task) > 1 else task, results, seed_values(results))
            for task, folder, results in loaded]


def scores(tasks: Sequence[TaskResults]) -> dict[str, dict[str, list[float]]]:
    """entry -> task name -> its normalised scores (module docstring), one per seed paired with the task's
    baseline; tasks whose metric has no better side are left out."""
    out: dict[str, dict[str, list[float]]] = {}
    for task in tasks:
        if task.direction is None:
            continue
        base = task.oriented(task.baseline)
        for label in task.results["entries"]:
            mine = task.oriented(label)
            seeds = [s for s in mine if s in base]
            if label == task.baseline or not seeds:
                continue
            scale = abs(statistics.fmean(base[s] for s in seeds))
            if scale > 0:
                out.setdefault(label, {})[task.name] = [100 * (mine[s] - base[s]) / scale for s in seeds]
    return out


@dataclass
class EntrySummary:
    """One entry across tasks: the tasks it has a paired seed in, the seeds, the IQM of its normalised scores and
    the probability of improvement over the baseline, each (estimate, low, high)."""

    label: str
    tasks: int
    seeds: int
    iqm: tuple[float, float, float]
    improvement: tuple[float, float, float] | None
    verdicts: dict[str, str]  # task name -> verdict


def summarize_entries(tasks: Sequence[TaskResults]) -> list[EntrySummary]:
    """An EntrySummary per entry with normalised scores, in order of first appearance."""
    per_entry = scores(tasks)
    out = []
    for label, by_task in per_entry.items():
        used = [t for t in tasks if t.name in by_task]
        x = [list(t.oriented(label).values()) for t in used]
        y = [list(t.oriented(t.baseline).values()) for t in used]
        verdicts = {t.name: t.results["comparisons"].get(HEADLINE, {}).get(label, {}).get("verdict", "no verdict")
                    for t in used}
        out.append(EntrySummary(label, len(used), sum(map(len, by_task.values())),
                                stratified_bootstrap(list(by_task.values())), probability_of_improvement(x, y),
                                verdicts))
    return out


def rank_blocks(tasks: Sequence[TaskResults]) -> tuple[list[str], np.ndarray]:
    """(routers in every task with a better side, scores (blocks, routers)): a block per (task, seed) where every
    one of them has a finite metric, oriented so that higher is better."""
    directed = [t for t in tasks if t.direction is not None]
    if not directed:
        return [], np.zeros((0, 0))
    common = [label for label in directed[0].results["entries"] if all(label in t.values and t.oriented(label)
                                                                       for t in directed)]
    rows = []
    for task in directed:
        per_label = [task.oriented(label) for label in common]
        seeds = sorted(set.intersection(*(set(v) for v in per_label))) if per_label else []
        rows += [[v[s] for v in per_label] for s in seeds]
    return common, np.asarray(rows, dtype=float).reshape(len(rows), len(common))


def _interval(estimate: tuple[float, float, float], digits: int = 1, sign: str = "+") -> str:
    """ "+2.2 [+0.5, +3.4]": an estimate and its interval, signed unless sign is ""."""
    value, low, high = estimate
    return f"{value:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def per_task_table(tasks: Sequence[TaskResults], summaries: Sequence[EntrySummary]) -> Table:
    """entries x tasks: the verdict and the mean normalised score of each (the baseline and missing entries named)."""
    per_entry = scores(tasks)
    labels = list(dict.fromkeys([*(s.label for s in summaries), *(t.baseline for t in tasks)]))
    body = []
    for label in labels:
        row = [label]
        for task in tasks:
            if label == task.baseline:
                row.append("baseline")
            elif task.name in per_entry.get(label, {}):
                verdict = task.results["comparisons"].get(HEADLINE, {}).get(label, {}).get("verdict", "no verdict")
                row.append(f"{verdict}, {statistics.fmean(per_entry[label][task.name]):+.1f} %")
            else:
                row.append("not in this task" if label not in task.values else "no paired seed")
        body.append(row)
    return Table(["entry", *(f"{t.name} vs {t.baseline}" for t in tasks)], body)


def aggregate_table(summaries: Sequence[EntrySummary], total: int) -> Table:
    body = [[s.label, f"{s.tasks} of {total}", str(s.seeds), _interval(s.iqm),
             "" if s.improvement is None else _interval(s.improvement, 2, ""),
             ", ".join(f"{v}: {sum(x == v for x in s.verdicts.values())}" for v in dict.fromkeys(s.verdicts.values()))]
            for s in summaries]
    return Table(["entry", "tasks", "paired seeds", "IQM of normalised scores, % [95 % CI]",
                  "P(better than the baseline) [95 % CI]", "verdicts"], body)


def sentence(s: EntrySummary) -> str:
    verdicts = "; ".join(f"{v} on {task}" for task, v in s.verdicts.items())
    improvement = "" if s.improvement is None else (f", better than the baseline with probability "
                                                    f"{_interval(s.improvement, 2, '')}")
    return (f"{s.label}: interquartile mean {_interval(s.iqm)} % (normalised, + = better) over {s.tasks} task"
            f"{'s' if s.tasks != 1 else ''} and {s.seeds} paired seeds{improvement}; {verdicts}.")


def _cd_blocks(tasks: Sequence[TaskResults], out: Path, vector: bool) -> list[Block]:
    labels, blocks = rank_blocks(tasks)
    path = out / "plots" / "critical_difference.png"
    heading = Heading("Critical-difference diagram", 2)
    if len(labels) < 2 or blocks.shape[0] < 2:
        save_or_remove(None, path)
        return [heading, Text(f"Needs two routers in every task and two (task, seed) blocks where all finished; "
                              f"here {len(labels)} router(s) ({', '.join(labels) or 'none'}) and {blocks.shape[0]} "
                              "block(s).")]
    result = friedman(blocks)
    save_or_remove(critical_difference(labels, result), path, vector)
    text = (f"Mean rank of each router (1 = best) over {result.blocks} blocks, a block being a (task, seed) where "
            f"{', '.join(labels)} all finished: Friedman chi-square {format_number(result.statistic)} "
            f"({len(labels) - 1} degrees of freedom), p = {format_number(result.p_value)}; Nemenyi critical difference "
            f"{format_number(result.cd)} at alpha {result.alpha:g}. A thick line joins routers whose mean ranks differ "
            "by less than it (not told apart); "
            + ("the Friedman test resolves a difference among them." if result.p_value < result.alpha else
               "the Friedman test does not resolve a difference among them, so no pair is told apart."))
    return [heading, Text(text), Image(path.relative_to(out), "Critical-difference diagram: mean ranks over "
                                       "(task, seed) blocks, Friedman + Nemenyi, alpha 0.05.")]


METHOD = ("Normalised score: an entry's headline metric minus its task baseline's at the same seed (same batches, "
          "evaluation samples and initial shared parameters), in % of the baseline's mean over the paired seeds, "
          "signed so that + is better; the baseline scores 0. Interquartile mean (IQM): the mean of the middle half "
          "of an entry's scores over all (task, seed) pairs; its 95 % interval resamples the seeds within each task "
          "(stratified bootstrap, 2000 draws), as rliable does. P(better than the baseline): for each task the share "
          "of (entry run, baseline run) pairs where the entry's metric is better (ties one half), averaged over "
          "tasks, with the same stratified bootstrap. The per-task verdicts are each comparison's own, unchanged: "
          "no verdict is drawn across tasks here.")


def tasks_document(tasks: Sequence[TaskResults], out: Path, vector: bool = True) -> list[Block]:
    """The report across tasks as blocks; draws its figures under out/plots."""
    summaries = summarize_entries(tasks)
    blocks: list[Block] = [Heading(f"Across {len(tasks)} tasks: " + ", ".join(t.name for t in tasks), 1)]
    blocks.append(Bullets([sentence(s) for s in summaries]) if summaries else
                  Text("No entry has a seed paired with a baseline."))
    warnings = [f"{t.name}: {w}" for t in tasks for w in caveats(t.results)]
    undirected = [t.name for t in tasks if t.direction is None]
    warnings += [f"{name}: its metric has no better side; left out of the scores and ranks." for name in undirected]
    if warnings:
        blocks += [Heading("Warnings"), Bullets(warnings, warning=True)]
    blocks += [Heading(f"Per task: verdict and mean {SCORE}"),
               Text("Each comparison's own verdict of the entry against its baseline (paired by seed), and the mean "
                    "normalised score there."), per_task_table(tasks, summaries),
               Heading(f"Aggregate over tasks: {SCORE}"), aggregate_table(summaries, len(tasks))]
    per_entry = scores(tasks)
    figures = [("normalised_scores", normalised_scores(per_entry, {s.label: s.iqm for s in summaries}, SCORE),
                "Normalised scores: a dot per (task, seed), coloured by task, each paired with the task baseline at "
                "the same seed; black diamond and line: the interquartile mean with its stratified bootstrap 95 % "
                "interval."),
               ("improvement_across", interval_rows(
                   [(s.label, *s.improvement, "tab:blue", f"{s.tasks} tasks") for s in summaries if s.improvement],
                   "P(entry better than the baseline)", 0.5, (-0.02, 1.02)) if summaries else None,
                "Probability of improvement over tasks: per task the share of (entry run, baseline run) pairs where "
                "the entry is better, averaged over tasks; stratified bootstrap 95 % interval.")]
    for stem, fig, caption in figures:
        path = out / "plots" / f"{stem}.png"
        if save_or_remove(fig, path, vector):
            blocks.append(Image(path.relative_to(out), caption))
    blocks += _cd_blocks(tasks, out, vector)
    blocks.append(Details("Method: scores, aggregate and ranks", METHOD))
    sources = [f"{t.name}: {t.results.get('command') or 'command not recorded'} (baseline {t.baseline})"
               for t in tasks]
    return [*blocks, Heading("Comparisons read"), Bullets(sources)]


@dataclass
class AcrossFiles:
    markdown: Path
    html: Path
    plots: list[Path]
    tables: list[Path]


def _write_tables(tasks: Sequence[TaskResults], out: Path, latex: bool, csv_file: bool) -> list[Path]:
    """out/across.tex (the per-task and aggregate tables, booktabs) and out/across_tasks.csv, out/aggregate.csv (raw
    numbers)."""
    summaries, written = summarize_entries(tasks), []
    if latex:
        written.append(out / "across.tex")
        written[-1].write_text(render_latex([
            (f"Per task: verdict and mean {SCORE}", per_task_table(tasks, summaries)),
            (f"Aggregate over tasks: {SCORE}", aggregate_table(summaries, len(tasks)))]), encoding="utf-8")
    if csv_file:
        per_entry = scores(tasks)
        rows = [[t.name, s.label, t.baseline, s.verdicts[t.name], statistics.fmean(per_entry[s.label][t.name]),
                 len(per_entry[s.label][t.name])] for s in summaries for t in tasks if t.name in s.verdicts]
        written.append(write_csv(out / "across_tasks.csv", ["task", "entry", "baseline", "verdict",
                                                            "mean_normalised_score_pct", "seeds"], rows))
        written.append(write_csv(out / "aggregate.csv", ["entry", "tasks", "seeds", "iqm_pct", "iqm_low_pct",
                                                         "iqm_high_pct", "p_improvement", "p_improvement_low",
                                                         "p_improvement_high"],
                                 [[s.label, s.tasks, s.seeds, *s.iqm, *(s.improvement or (None,) * 3)]
                                  for s in summaries]))
    return written


def write_across(sources: Sequence[str | os.PathLike | Mapping], out_dir: str | os.PathLike,
                 baseline: str | None = None, margin: Margin | Literal["recorded"] | None = RECORDED,
                 vector: bool = True, latex: bool = False, csv_file: bool = False) -> AcrossFiles:
    """Write out_dir/report.md, report.html and plots/ of the comparisons in `sources` read across tasks
    (`load_tasks`), with latex / csv_file their tables (`_write_tables`); out_dir is held while they are written."""
    tasks = load_tasks(sources, baseline, margin)
    with hold_folder(out_dir) as out:
        blocks = tasks_document(tasks, out, vector)
        files = AcrossFiles(out / "report.md", out / "report.html",
                            [out / b.path for b in blocks if isinstance(b, Image)], _write_tables(tasks, out, latex,
                                                                                                   csv_file))
        files.markdown.write_text(render_markdown(blocks), encoding="utf-8")
        files.html.write_text(render_html(blocks, blocks[0].text, out), encoding="utf-8")
    return files
