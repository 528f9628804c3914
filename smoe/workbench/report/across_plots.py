"""Figures of a report across tasks (`workbench.report.across_tasks`): the normalised scores per entry with their
interquartile mean, and the critical-difference diagram of the routers' mean ranks (Demšar 2006)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from smoe.workbench.measure.aggregate import Friedman


def normalised_scores(scores: Mapping[str, Mapping[str, Sequence[float]]],
                      aggregate: Mapping[str, tuple[float, float, float]], xlabel: str) -> Figure | None:
    """One row per entry: every (task, seed) score as a dot coloured by task, the aggregate (estimate, low, high) as
    a black diamond with its interval; scores: entry -> task -> per-seed scores."""
    entries = [label for label, tasks in scores.items() if any(tasks.values())]
    if not entries:
        return None
    tasks = list(dict.fromkeys(task for label in entries for task in scores[label]))
    fig = Figure(figsize=(7.6, 1.4 + 0.55 * len(entries)), layout="constrained")
    ax = fig.add_subplot()
    for y, label in enumerate(reversed(entries)):
        for t, task in enumerate(tasks):
            values = scores[label].get(task, [])
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
            ax.scatter(values, y + 0.18 + jitter * 0.5, s=16, color=f"C{t % 10}", alpha=0.8, label=task)
        if label in aggregate:
            estimate, low, high = aggregate[label]
            ax.plot([low, high], [y - 0.12, y - 0.12], color="black", linewidth=2)
            ax.plot([estimate], [y - 0.12], "D", color="black", markersize=5)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(entries)), list(reversed(entries)))
    ax.set(ylim=(-0.7, len(entries) - 0.3), xlabel=xlabel)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="task")
    ax.grid(alpha=0.3, axis="x")
    return fig


def cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs (first, last) of positions in `ranks` sorted ascending whose largest and smallest rank differ by
    less than cd: the groups the Nemenyi test cannot tell apart; runs of one are left out."""
    order = sorted(ranks)
    out: list[tuple[int, int]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and order[j + 1] - order[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in out):
            out.append((i, j))
    return out


def critical_difference(labels: Sequence[str], result: Friedman) -> Figure:
    """The critical-difference diagram: a rank axis (1 = best, at the left), each router's mean rank with its name,
    the Nemenyi critical difference as a bar, and a thick line joining routers whose ranks differ by less."""
    k = len(labels)
    order = sorted(range(k), key=lambda i: result.mean_ranks[i])
    ranks = [result.mean_ranks[i] for i in order]
    names = [labels[i] for i in order]
    groups = cliques(ranks, result.cd)
    half = (k + 1) // 2
    top, step = 1.0, 0.22  # the rank axis; the vertical step between labels
    first = top - 0.2 - 0.07 * len(groups)  # the first label's line, below the bars of the groups
    fig = Figure(figsize=(7.6, 1.4 + 0.35 * half + 0.12 * len(groups)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(0.6, k + 0.4)
    ax.hlines(top, 1, k, color="black", linewidth=1)
    for r in range(1, k + 1):
        ax.vlines(r, top, top + 0.06, color="black", linewidth=1)
        ax.text(r, top + 0.1, str(r), ha="center", va="bottom", fontsize=9)
    for position, (rank, name) in enumerate(zip(ranks, names)):
        left = position < half
        depth = first - step * (position if left else k - 1 - position)
        end = 0.65 if left else k + 0.35
        ax.plot([rank, rank, end], [top, depth, depth], color="black", linewidth=0.9)
        ax.text(end + (-0.03 if left else 0.03), depth, f"{name} ({rank:.2f})", ha="right" if left else "left",
                va="center", fontsize=9)
    ax.plot([1, 1 + result.cd], [top + 0.42, top + 0.42], color="tab:red", linewidth=2)
    ax.text(1 + result.cd / 2, top + 0.47, f"CD = {result.cd:.2f}", ha="center", va="bottom", fontsize=9,
            color="tab:red")
    for n, (i, j) in enumerate(groups):
        y = top - 0.1 - 0.07 * n
        ax.plot([ranks[i] - 0.03, ranks[j] + 0.03], [y, y], color="tab:blue", linewidth=4, solid_capstyle="round")
    ax.set_ylim(first - step * (half - 1) - 0.15, top + 0.7)
    ax.axis("off")
    return fig
