"""Pictures of the evidence a comparison's verdicts rest on (matplotlib Figures, no pyplot global state):

- `paired_seeds`: per entry, each seed a line from the baseline's final metric to the entry's at that seed;
- `difference_curves`: per entry, the paired difference of the validation metric over training (entry - baseline
  at the same seed and step), mean over seeds with a pointwise 95 % Student-t band;
- `improvement`: per entry, the probability of improvement (the share of paired seeds where the entry is better, a
  diverged seed counting against its side) with its interval, as the verdicts recorded it (`prob_improvement*`).

Inputs are results with statistics (`workbench.results.verdicts.with_statistics`); a function returns None when no
entry has the data. Non-finite values are left out of the pictures (the warnings and tables name them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats as st

from smoe.workbench.document import Block, Heading, Image, Text
from smoe.workbench.numbers import is_finite
from smoe.workbench.report.forest import VERDICT_COLORS
from smoe.workbench.report.plots import interval_rows, panel_grid, save_or_remove
from smoe.workbench.results.schema import is_finished, metric_spec, number, records, run_label
from smoe.workbench.results.verdicts import seed_values

HEADLINE = "final.metric"
PAIRED = ("paired by seed: at one seed both runs saw the same batches, the same evaluation samples and the same "
          "initial values of the shared parameters")


def _entries(results: Mapping) -> list[str]:
    return [label for label in results["entries"] if label != results["baseline"]]


def _good(direction: bool | None, difference: float) -> str:
    """The colour of a per-seed difference: green better, red worse, grey tied or without a good direction."""
    if direction is None or difference == 0:
        return "tab:gray"
    return "tab:green" if (difference > 0) == direction else "tab:red"


def paired_seeds(results: Mapping) -> Figure | None:
    """One panel per entry: the baseline's and the entry's final metric at each seed both finished with a finite
    value, joined by a line (green: the entry is better at that seed, red: worse)."""
    name, direction = metric_spec(results)
    values, baseline = seed_values(results), results["baseline"]
    base = values.get(baseline, {})
    panels = []
    for label in _entries(results):
        pairs = [(seed, base[seed][HEADLINE], v[HEADLINE]) for seed, v in sorted(values.get(label, {}).items())
                 if is_finite(v.get(HEADLINE)) and is_finite(base.get(seed, {}).get(HEADLINE))]
        if pairs:
            panels.append((label, pairs))
    if not panels:
        return None
    fig, axes = panel_grid(len(panels), cols=4, width=3.4, height=3.4)
    for ax, (label, pairs) in zip(axes, panels):
        for seed, b, e in pairs:
            ax.plot([0, 1], [b, e], color=_good(direction, e - b), marker="o", markersize=4, linewidth=1.4)
            ax.annotate(f"s{seed}", (1, e), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xticks([0, 1], [baseline, label])
        ax.set_xlim(-0.25, 1.35)
        ax.set(title=f"{label} (n={len(pairs)})", ylabel=name)
        ax.grid(alpha=0.3, axis="y")
    return fig


def _finished_by_seed(results: Mapping) -> dict[str, dict[int, Mapping]]:
    """label -> seed -> its finished run (a later run of a seed wins, as in `seed_values`)."""
    out: dict[str, dict[int, Mapping]] = {}
    for run in results["runs"]:
        seed = number(run.get("seed"))
        if is_finished(run) and is_finite(seed):
            out.setdefault(run_label(run), {})[int(seed)] = run
    return out


def _curve(run: Mapping) -> dict[float, float]:
    return {s: m for c in records(run, "curve") if is_finite(s := number(c.get("step")))
            and is_finite(m := number(c.get("metric")))}


def paired_curve(entry: Mapping[int, Mapping], baseline: Mapping[int, Mapping]) -> dict[float, tuple[float, float,
                                                                                                          int]]:
    """step -> (mean, half-width of the 95 % Student-t interval (nan for one seed), seeds) of the per-seed
    difference entry - baseline of the validation metric, over the seeds where both runs recorded that step."""
    per_step: dict[float, list[float]] = {}
    for seed, run in entry.items():
        if seed not in baseline:
            continue
        base = _curve(baseline[seed])
        for step, value in _curve(run).items():
            if step in base:
                per_step.setdefault(step, []).append(value - base[step])
    out = {}
    for step, d in sorted(per_step.items()):
        n = len(d)
        half = float(st.t.ppf(0.975, n - 1) * np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        out[step] = (float(np.mean(d)), half, n)
    return out


def difference_curves(results: Mapping) -> Figure | None:
    """One panel per entry: the paired difference of the validation metric over training with its 95 % band."""
    name, direction = metric_spec(results)
    runs, baseline = _finished_by_seed(results), results["baseline"]
    panels = [(label, curve) for label in _entries(results)
              if (curve := paired_curve(runs.get(label, {}), runs.get(baseline, {})))]
    if not panels:
        return None
    fig, axes = panel_grid(len(panels), cols=3, width=4.6, height=3.2)
    for i, (ax, (label, curve)) in enumerate(zip(axes, panels)):
        steps = list(curve)
        mean = np.array([curve[s][0] for s in steps])
        half = np.array([curve[s][1] for s in steps])
        seeds = max(n for _, _, n in curve.values())
        ax.plot(steps, mean, color=f"C{(i + 1) % 10}", marker="o" if len(steps) <= 12 else None, markersize=3,
                label=f"mean over seeds (n={seeds})")
        if np.isfinite(half).any():
            ax.fill_between(steps, mean - half, mean + half, color=f"C{(i + 1) % 10}", alpha=0.2, linewidth=0,
                            label="95 % band")
        ax.axhline(0.0, color="black", linewidth=0.8)
        side = {True: "above 0: entry better", False: "below 0: entry better", None: ""}[direction]
        ax.set(title=f"{label} - {baseline}", xlabel="step", ylabel=f"Δ valid {name}" + (f" ({side})" if side else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def improvement_of(c: Mapping) -> tuple[float, float, float] | None:
    """(estimate, low, high) of the probability of improvement the verdict recorded; None when it has none."""
    recorded = [number(c.get(k)) for k in ("prob_improvement", "prob_improvement_low", "prob_improvement_high")]
    return (recorded[0], recorded[1], recorded[2]) if all(is_finite(v) for v in recorded) else None


def improvement(results: Mapping) -> Figure | None:
    """One row per entry: its probability of improvement over the baseline with the interval, 0.5 marked."""
    comparisons = results["comparisons"].get(HEADLINE, {})
    rows = [(label, pi, comparisons[label]) for label in _entries(results) if label in comparisons
            and (pi := improvement_of(comparisons[label])) is not None]
    if not rows:
        return None
    return interval_rows([(label, p, low, high, VERDICT_COLORS.get(c.get("verdict"), "tab:gray"), f"n={c.get('n')}")
                          for label, (p, low, high), c in rows], f"P(entry better than {results['baseline']} at a "
                         "seed)", 0.5, (-0.02, 1.02))


def evidence_blocks(results: Mapping, out: Path, vector: bool = True) -> list[Block]:
    """The section: the three pictures under out/plots (PNG, and PDF with vector), each with a caption that says what
    is paired; pictures without data are removed (and named; no section at all without an entry to compare)."""
    name, _ = metric_spec(results)
    baseline = results["baseline"]
    figures = (
        ("paired_seeds", "Per seed, paired", paired_seeds(results), f"No entry has a finite final {name} at a "
         f"seed where {baseline} has one.",
         f"Final test {name} of {baseline} (left) and of each entry (right) at every seed where both finished, one "
         f"line per seed, {PAIRED}. Green: the entry is better at that seed; red: worse."),
        ("difference_curve", "The paired difference over training", difference_curves(results),
         f"No entry has a validation curve at a seed where {baseline} has one.",
         f"Validation {name} of the entry minus {baseline}'s at the same seed and step, mean over the seeds with "
         "a pointwise 95 % Student-t band (not adjusted over steps: a picture of the trend, not a test)."),
        ("improvement", "Probability of improvement", improvement(results),
         "No entry has a paired difference in a metric with a better side.",
         f"Share of paired seeds where the entry beats {baseline} (ties count one half) with its 95 % percentile "
         "bootstrap interval over seeds; 0.5: neither is better more often. Colour: the verdict."),
    )
    blocks: list[Block] = [Heading("Evidence", 2)]
    for stem, title, fig, absent, caption in figures:
        path = out / "plots" / f"{stem}.png"
        drawn = save_or_remove(fig, path, vector)
        blocks += [Heading(title, 3), Image(path.relative_to(out), caption) if drawn else Text(absent)]
    return blocks if _entries(results) else []
