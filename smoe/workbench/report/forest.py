"""Forest plot of paired differences against a baseline (matplotlib Figure, no pyplot global state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "higher": "tab:blue", "lower": "tab:blue"}


def forest(panels: Sequence[tuple[str, Mapping[str, Mapping]]], baseline: str) -> Figure | None:
    """One panel per (title, label -> comparison of `verdicts.compare_column`): per entry, top to bottom, the mean
    difference (entry - baseline) with its 95 % interval and a zero line; green better, red worse, grey not resolved.
    None when no panel has an entry with a finite mean."""
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
        ax.set_yticks(range(len(entries)), list(reversed(entries)))
        ax.set_ylim(-0.7, len(entries) - 0.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"difference vs {baseline} (95 % CI)")
    return fig
