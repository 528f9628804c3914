"""Forest plot of paired differences against a baseline (matplotlib Figure, no pyplot global state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "higher": "tab:blue", "lower": "tab:blue",
                  "equivalent": "tab:purple", "non-inferior": "tab:olive", "non-superior": "tab:orange"}


def forest(panels: Sequence[tuple[str, Mapping[str, Mapping]]], baseline: str) -> Figure | None:
    """One panel per (title, label -> comparison of `verdicts.judge_columns`): per entry, top to bottom, the mean
    difference (entry - baseline) with its interval at the level it was judged at, a zero line and the margins
    (dashed) where there are; green better, red worse, purple equivalent, olive non-inferior, orange non-superior,
    grey not resolved. None when no panel has an entry with a finite mean."""
    panels = [(title, {label: c for label, c in entries.items() if c.get("mean") is not None})
              for title, entries in panels]
    panels = [(title, entries) for title, entries in panels if entries]
    if not panels:
        return None
    rows = max(len(entries) for _, entries in panels)
    fig = Figure(figsize=(5.2 * len(panels), 1.2 + 0.45 * rows), layout="constrained")
    for i, (title, entries) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for y, c in enumerate(reversed(list(entries.values()))):
            color = VERDICT_COLORS.get(c.get("verdict"), "tab:gray")
            low, high = c.get("ci_low"), c.get("ci_high")
            if low is not None and high is not None:
                ax.plot([low, high], [y, y], color=color, linewidth=2)
            ax.plot([c["mean"]], [y], "o", color=color)
        ax.axvline(0.0, color="black", linewidth=0.8)
        for margin in {c["margin"] for c in entries.values() if c.get("margin")}:
            for side in (-margin, margin):
                ax.axvline(side, color="black", linewidth=0.6, linestyle="--")
        ax.set_yticks(range(len(entries)), list(reversed(entries)))
        ax.set_ylim(-0.7, len(entries) - 0.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"difference vs {baseline} (interval at the judged level)")
    return fig
