"""The tuning section of a comparison report (results.json's "tuning", written by `workbench.grid.tune`): each
entry's pick and its validation metric at every tuned value (a table and plots/tuning.png), the tuning seeds, and
that the test split took no part in the choice."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from smoe.workbench.document import Block, Heading, Image, Table, Text
from smoe.workbench.numbers import format_duration, format_number, is_finite
from smoe.workbench.report.plots import save_figure
from smoe.workbench.results.schema import number, records

TUNING_PLOT = "plots/tuning.png"


def _points(tuning: Mapping) -> list[dict[str, str]]:
    params = tuning.get("params") or {}
    return [dict(zip(params, combo)) for combo in itertools.product(*params.values())]


def _point_text(point: Mapping) -> str:
    return ", ".join(f"{key}={value}" for key, value in point.items())


def validation_means(tuning: Mapping) -> dict[str, list[float | None]]:
    """label -> the mean validation metric over the tuning seeds at every point (`_points` order); NaN where a seed
    failed or was not finite (such a value is never picked), None where no run has finished."""
    seeds = tuning.get("seeds") or []
    runs = [r for r in records(tuning, "runs") if r.get("status") == "done"]
    out = {}
    for label in tuning.get("picks") or {}:
        means = []
        for point in _points(tuning):
            values = {r.get("seed"): number(r.get("valid_metric")) for r in runs
                      if r.get("label") == label and r.get("values") == point}
            if not values:
                means.append(None)
            elif all(is_finite(values.get(seed)) for seed in seeds):
                means.append(sum(values[seed] for seed in seeds) / len(seeds))
            else:
                means.append(math.nan)
        out[label] = means
    return out


def tuning_table(tuning: Mapping) -> Table:
    """One row per entry: its pick, then its mean validation metric at each value ("not run" where no run finished,
    "n/a" where one failed or was not finite)."""
    points, picks = _points(tuning), tuning.get("picks") or {}
    body = []
    for label, means in validation_means(tuning).items():
        pick = picks.get(label)
        body.append([label, "none" if pick is None else _point_text(pick),
                     *("not run" if m is None else format_number(m) for m in means)])
    return Table(["entry", "pick", *(_point_text(p) for p in points)], body)


def tuning_figure(tuning: Mapping) -> Figure | None:
    """Mean validation metric against the tuned value, one line per entry, its pick starred (log x for one numeric
    key spanning a factor of 10 or more; one tick per point otherwise); None when nothing finished."""
    points, picks = _points(tuning), tuning.get("picks") or {}
    means = validation_means(tuning)
    if not any(is_finite(m) for values in means.values() for m in values):
        return None
    numeric = [_float(p) for p in points] if len(tuning.get("params") or {}) == 1 else []
    numeric = numeric if numeric and all(is_finite(x) for x in numeric) else []
    xs: Sequence[float] = numeric or range(len(points))
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, values) in enumerate(means.items()):
        kept = [(x, m) for x, m in zip(xs, values) if is_finite(m)]
        if kept:
            ax.plot(*zip(*kept), marker="o", color=f"C{i % 10}", label=label)
        if picks.get(label) in points and is_finite(m := values[points.index(picks[label])]):
            ax.plot([xs[points.index(picks[label])]], [m], marker="*", markersize=14, color=f"C{i % 10}")
    if numeric:
        if min(numeric) > 0 and max(numeric) >= 10 * min(numeric):
            ax.set_xscale("log")
        ax.set_xticks(numeric, [next(iter(p.values())) for p in points])
        ax.set_xlabel(next(iter(tuning["params"])))
    else:
        ax.set_xticks(list(xs), [_point_text(p) for p in points], rotation=30, ha="right")
    name = (tuning.get("metric") or {}).get("name", "metric")
    ax.set_ylabel(f"validation {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _float(point: Mapping) -> float | None:
    """The value of a one-key point as a number; None when it is not one."""
    try:
        return float(next(iter(point.values())))
    except (TypeError, ValueError):
        return None


def tuning_blocks(results: Mapping, out: Path, vector: bool = True) -> list[Block]:
    """The section (nothing when the comparison was not tuned); draws out/plots/tuning.png (and .pdf with vector)."""
    tuning = results.get("tuning")
    path = out / TUNING_PLOT
    for stale in (path, path.with_suffix(".pdf")):  # a plot of an earlier rendering must not survive
        stale.unlink(missing_ok=True)
    if not isinstance(tuning, Mapping):
        return []
    seeds = tuning.get("seeds") or []
    metric = tuning.get("metric") or {}
    direction = {True: "highest", False: "lowest"}.get(metric.get("higher_is_better"), "best")
    runs = records(tuning, "runs")
    spent = sum(t for r in runs if is_finite(t := number(r.get("train_time_s"))))
    compared = sorted({int(seed) for run in records(results, "runs") if is_finite(seed := number(run.get("seed")))})
    text = (f"Every entry was tuned with the same budget: {len(_points(tuning))} values x {len(seeds)} tuning seed(s) "
            f"({', '.join(map(str, seeds))}; the compared runs use seeds {', '.join(map(str, compared)) or 'none'}), "
            f"{len(runs)} runs and {format_duration(spent)} of training. Each entry runs at its pick: the value with "
            f"the {direction} mean validation {metric.get('name', 'metric')} over the tuning seeds (a value with a "
            f"failed or non-finite run is never picked). Only the validation split was read: the test split was never "
            f"used to choose.")
    blocks: list[Block] = [Heading("Tuning"), Text(text), tuning_table(tuning)]
    fig = tuning_figure(tuning)
    if fig is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, path, vector=vector)
        blocks.append(Image(Path(TUNING_PLOT), f"Mean validation {metric.get('name', 'metric')} over the tuning "
                                               "seeds at each value; the star marks each entry's pick."))
    return blocks
