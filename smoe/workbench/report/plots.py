"""Figures of a comparison report, one function per plot (matplotlib Agg figures, no pyplot global state).

Every function takes `groups`: label -> the finished runs of that label (results.json schema,
`workbench.results.schema`), in report order, which fixes each label's colour across figures. It returns a Figure,
or None when no run recorded the data. Non-finite values are left out of the figures (the tables show them as "n/a").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smoe.workbench.numbers import finite_mean, is_finite
from smoe.workbench.results.schema import get, number, numbers, records

Groups = Mapping[str, Sequence[Mapping]]
Series = dict[float, float]


def save_figure(fig: Figure, path: Path, vector: bool = False) -> list[Path]:
    """Write fig as a PNG (Agg, for the screen) and, with vector, as a PDF beside it (vector art, images at 300 dpi,
    for print), without software or date stamps so that the same results give the same bytes; returns the paths."""
    fig.savefig(path, dpi=100, metadata={"Software": None})
    if not vector:
        return [path]
    pdf = path.with_suffix(".pdf")
    fig.savefig(pdf, dpi=300, metadata={"Creator": None, "Producer": None, "CreationDate": None})
    return [path, pdf]


def _color(index: int) -> str:
    return f"C{index % 10}"


def _grid(panels: int, cols: int = 3, width: float = 4.6, height: float = 3.4) -> tuple[Figure, list]:
    """A figure with `panels` axes, `cols` per row."""
    cols = min(cols, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]


def _series(items: Sequence[Mapping], x_key: str, y: Callable[[Mapping], float | None]) -> Series:
    """{x: y(item)} over the items whose x and y are finite numbers."""
    out = {}
    for item in items:
        x, value = number(item.get(x_key)), y(item)
        if is_finite(x) and is_finite(value):
            out[x] = value
    return out


def _band(ax, series: list[Series], color: str, label: str) -> None:
    """Mean over seeds at each x (seeds that have it), with a min-max band when there are several seeds."""
    xs = sorted(set().union(*series))
    ys = [[s[x] for s in series if x in s] for x in xs]
    ax.plot(xs, [np.mean(y) for y in ys], color=color, marker="o" if len(xs) <= 12 else None, markersize=3,
            label=f"{label} (n={len(series)})")
    if len(series) > 1:
        ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=color, alpha=0.2, linewidth=0)


def _line_panels(groups: Groups, panels: Sequence[tuple[str, str]], xlabel: str,
                 series_of: Callable[[Mapping, str], Series]) -> Figure | None:
    """One axes per (key, ylabel) panel that some run has data for; one band per label in each."""
    per_panel = [(key, ylabel, [[s for run in runs if (s := series_of(run, key))] for runs in groups.values()])
                 for key, ylabel in panels]
    per_panel = [p for p in per_panel if any(p[2])]
    if not per_panel:
        return None
    fig, axes = _grid(len(per_panel))
    for ax, (_, ylabel, by_label) in zip(axes, per_panel):
        for i, (label, series) in enumerate(zip(groups, by_label)):
            if series:
                _band(ax, series, _color(i), label)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and corruption levels
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def validation_curves(groups: Groups, metric_name: str) -> Figure | None:
    """Validation metric and loss against training step, per label."""
    return _line_panels(groups, [("metric", metric_name), ("valid_loss", "valid loss")], "step",
                        lambda run, key: _series(records(run, "curve"), "step", lambda c: number(c.get(key))))


def fluctuation(groups: Groups) -> Figure | None:
    """Routing fluctuation (mean over layers) against training step, top-1 and top-k set."""
    panels = [("top1", "top-1 changed (fraction)"), ("topk_set", "top-k set changed")]
    return _line_panels(groups, panels, "step", lambda run, key: _series(
        records(run, "routing", "fluctuation"), "step", lambda f: finite_mean(numbers(f.get(key)) or [])))


def robustness(groups: Groups, metric_name: str) -> Figure | None:
    """Task metric against corruption level, one panel per corruption."""
    names = dict.fromkeys(r.get("corruption") for runs in groups.values() for run in runs
                          for r in records(run, "robustness") if isinstance(r.get("corruption"), str))

    def series_of(run: Mapping, name: str) -> Series:
        entries = [r for r in records(run, "robustness") if r.get("corruption") == name]
        return _series(entries, "level", lambda r: number(r.get("metric")))

    return _line_panels(groups, [(name, f"{metric_name} under {name}") for name in names], "corruption level",
                        series_of)


def final_metric(groups: Groups, metric_name: str) -> Figure | None:
    """Final metric per label: every seed as a point, mean with a +-1 std bar (sample std) beside them."""
    values = [[v for run in runs if is_finite(v := number(get(run, "final", "metric")))] for runs in groups.values()]
    if not any(values):
        return None
    fig = Figure(figsize=(max(4.0, 1.1 * len(values) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    for i, seeds in enumerate(values):
        if not seeds:
            continue
        ax.scatter(i - 0.12 + np.linspace(-0.06, 0.06, len(seeds)), seeds, color=_color(i), s=18, alpha=0.8)
        std = np.std(seeds, ddof=1) if len(seeds) > 1 else 0.0
        ax.errorbar(i + 0.12, np.mean(seeds), yerr=std, color=_color(i), marker="D", capsize=4)
    ax.set_xticks(range(len(values)), list(groups), rotation=30, ha="right")
    ax.set(ylabel=metric_name, xlim=(-0.6, len(values) - 0.4))
    ax.grid(alpha=0.3, axis="y")
    return fig


def _matrix(rows: object) -> np.ndarray | None:
    """A rectangular list of number lists as an array; None when it is not one."""
    rows = [numbers(r) for r in rows] if isinstance(rows, list) and rows else None
    if not rows or any(r is None for r in rows) or len({len(r) for r in rows}) != 1:
        return None
    return np.array(rows)


def _seed_mean(matrices: list[np.ndarray]) -> tuple[np.ndarray, int] | None:
    """Mean of the matrices shaped like the first one, and how many there were."""
    if not matrices:
        return None
    same = [m for m in matrices if m.shape == matrices[0].shape]
    return np.mean(same, axis=0), len(same)


def _heatmaps(panels: list[tuple[str, np.ndarray, list[str]]], xlabel: str, ylabel: str,
              colorbar: str) -> Figure | None:
    """One heatmap per (title, matrix, row names) on a shared colour scale from 0."""
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    top = max((float(m[np.isfinite(m)].max()) for _, m, _ in panels if np.isfinite(m).any()), default=1.0)
    for ax, (title, matrix, row_names) in zip(axes, panels):
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=top if top > 0 else 1.0,
                          interpolation="nearest")
        ax.set_yticks(range(len(row_names)), row_names)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(image, ax=axes, label=colorbar, shrink=0.9)
    return fig


def _layer_id(item: Mapping, position: int) -> int:
    layer = number(item.get("layer"))
    return int(layer) if is_finite(layer) else position


def load_heatmaps(groups: Groups) -> Figure | None:
    """Expert load fractions, layer x expert, one heatmap per label (mean over its seeds)."""
    panels = []
    for label, runs in groups.items():
        loads = []
        for run in runs:
            layers = sorted(enumerate(records(run, "routing", "layers")), key=lambda il: _layer_id(il[1], il[0]))
            matrix = _matrix([layer.get("load") for _, layer in layers])
            if matrix is not None:
                loads.append((matrix, [str(_layer_id(layer, i)) for i, layer in layers]))
        mean = _seed_mean([m for m, _ in loads])
        if mean is not None:
            panels.append((f"{label} (n={mean[1]})", mean[0], loads[0][1]))
    return _heatmaps(panels, "expert", "layer", "load (fraction of pairs)")


def _layer_pair(entry: Mapping) -> tuple[float, ...] | None:
    pair = numbers(entry.get("layers"))
    return tuple(pair) if pair and all(map(is_finite, pair)) else None


def coactivation(groups: Groups) -> Figure | None:
    """Co-activation matrix of the first recorded layer pair, one per label (mean over its seeds)."""
    panels = []
    for label, runs in groups.items():
        entries = [e for run in runs for e in records(run, "routing", "coactivation") if _layer_pair(e)]
        if not entries:
            continue
        first = min(_layer_pair(e) for e in entries)
        matrices = [_matrix(e.get("matrix")) for e in entries if _layer_pair(e) == first]
        mean = _seed_mean([m for m in matrices if m is not None])
        if mean is not None:
            a, b = (f"{x:g}" for x in first[:2])
            panels.append((f"{label}: layer {a} -> {b} (n={mean[1]})", mean[0], [str(i) for i in range(len(mean[0]))]))
    return _heatmaps(panels, "expert in the next layer", "expert", "co-activation")


def _latent(run: Mapping) -> tuple[np.ndarray, np.ndarray] | None:
    """(M, 2) points and (M,) expert ids of a run's latent map; None when absent or malformed."""
    points = _matrix(get(run, "latent", "points"))
    experts = numbers(get(run, "latent", "expert"))
    if points is None or points.shape[1] != 2 or experts is None or len(experts) != len(points):
        return None
    if not all(e.is_integer() for e in experts):
        return None
    return points, np.array(experts, dtype=int)


def latent_map(groups: Groups) -> Figure | None:
    """2-D map (t-SNE) of the VAE latent, coloured by expert: the first seed of each label that has one."""
    panels = []
    for label, runs in groups.items():
        found = next(((run, z) for run in runs if (z := _latent(run)) is not None), None)
        if found:
            panels.append((label, *found))
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (label, run, (points, experts)) in zip(axes, panels):
        cmap = colormaps["tab10" if experts.max() < 10 else "tab20"]
        for e in np.unique(experts):
            at = experts == e
            ax.scatter(points[at, 0], points[at, 1], s=6, color=cmap(e % cmap.N), label=f"expert {e}")
        ax.set(title=f"{label} (seed {run.get('seed', '?')})", xticks=[], yticks=[])
        if len(np.unique(experts)) <= 10:
            ax.legend(fontsize="x-small", markerscale=2)
    return fig
