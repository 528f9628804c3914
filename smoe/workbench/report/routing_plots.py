"""Routing pictures: how real inputs are routed, drawn from routing views (`workbench.run.routing_view`), one
matplotlib Figure per picture (no pyplot), the same for one run (`smoe show`) and for routers side by side (the
report).

Every function takes `views`: label -> view (in the order the rows should have) and returns a Figure, or None when
no view has what the picture needs. Panels are (label, layer); one colour per expert index everywhere
(`expert_color`); `picture_set` gives every picture with its title and caption.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from smoe.workbench.document import Block, Heading, Image, Text
from smoe.workbench.report.plots import save_figure
from smoe.workbench.run.routing_view import VIEW_FILE, read_view

Views = Mapping[str, dict]

PALETTE = [*colormaps["tab10"].colors, *colormaps["tab20b"].colors, *colormaps["tab20c"].colors]
NO_EXPERT = (0.85, 0.85, 0.85)  # a token that reached no expert (dropped, masked)
CHARS_PER_LINE = 110
TOKENS_SHOWN, SHARE_SHOWN = 7, 0.95  # tokens listed per expert; a share is written only below this
HEATMAP_COLUMNS = 48  # tokens (patches, images) of the weight heatmaps
FONT_PT = 10
CHAR_IN, LINE_IN = 0.6 * FONT_PT / 72, 0.29  # a monospace cell at FONT_PT, the line height (inches)


def expert_color(expert: int) -> tuple[float, float, float]:
    """The colour of an expert index in every picture (tab10, then tab20b and tab20c; cycles past 50)."""
    return NO_EXPERT if expert < 0 else to_rgb(PALETTE[expert % len(PALETTE)])


def _tint(color: tuple[float, float, float], strength: float) -> tuple[float, float, float]:
    """color mixed with white: strength 1 is the colour, 0 white."""
    s = min(max(strength, 0.0), 1.0)
    return tuple(1 - s * (1 - c) for c in color)


def shown_token(token: str) -> str:
    """A token as text in a list: a leading space as a visible ␣."""
    return "\u2423" + token[1:] if token.startswith(" ") else token


def _panels(views: Views, kind: set[str], key: str) -> list[tuple[str, dict, int]]:
    """(label, view, layer) for every view of one of the kinds that has `key`, every layer."""
    return [(label, view, layer) for label, view in views.items() if view.get("kind") in kind and view.get(key)
            for layer in range(len(view.get("layers") or view[key]))]


def _panel_grid(count: int, cols: int, width: float, height: float) -> tuple[Figure, list]:
    cols = max(1, min(cols, count))
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(count)]


def _layers(views: Views) -> int:
    return max((len(v.get("layers") or []) for v in views.values()), default=1) or 1


def _expert_ticks(ax, experts: int, axis: str = "y") -> None:
    """Tick labels e0, e1, ... in each expert's colour."""
    ticks = range(experts)
    names = [f"e{e}" for e in ticks]
    if axis == "y":
        ax.set_yticks(ticks, names)
        labels = ax.get_yticklabels()
    else:
        ax.set_xticks(ticks, names)
        labels = ax.get_xticklabels()
    for e, label in enumerate(labels):
        label.set_color(expert_color(e))
        label.set_fontweight("bold")


# ---------------------------------------------------------------- text coloured by expert


def _wrap(tokens: list[str]) -> list[list[tuple[int, int]]]:
    """Lines of (token index, column) with at most CHARS_PER_LINE characters each."""
    lines, line, col = [], [], 0
    for i, token in enumerate(tokens):
        width = max(len(token), 1)
        if line and col + width > CHARS_PER_LINE:
            lines.append(line)
            line, col = [], 0
        line.append((i, col))
        col += width
    return [*lines, line] if line else lines


def token_text(views: Views, sample: int = 0) -> Figure | None:
    """One text sample per (label, layer) block, each token's box coloured by its top-1 expert (stronger for a
    larger weight) with a bar under it in its second expert's colour."""
    blocks = []
    for label, view in views.items():
        if view.get("kind") != "text" or sample >= len(view.get("samples", [])):
            continue
        entry = view["samples"][sample]
        for layer, route in enumerate(entry["routes"]):
            blocks.append((f"{label} \u00b7 layer {layer}", entry["tokens"], route))
    if not blocks:
        return None
    experts = max(v.get("num_experts", 1) for v in views.values())
    wrapped = [_wrap(tokens) for _, tokens, _ in blocks]
    lines = 1 + sum(1 + len(w) for w in wrapped)  # legend, then a title line and the text of each block
    fig = Figure(figsize=(CHARS_PER_LINE * CHAR_IN + 0.2, lines * LINE_IN + 0.2))
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
    ax.set(xlim=(0, CHARS_PER_LINE), ylim=(lines, 0))
    ax.axis("off")
    font = {"family": "monospace", "size": FONT_PT, "va": "center"}
    ax.text(0, 0.5, "experts:", **font)
    for e in range(experts):
        x = 10 + 5 * e
        ax.add_patch(Rectangle((x, 0.1), 4, 0.8, facecolor=expert_color(e), edgecolor="none"))
        ax.text(x + 0.5, 0.5, f"e{e}", color="white", fontweight="bold", **font)
    y = 1
    for (title, tokens, route), block in zip(blocks, wrapped):
        ax.text(0, y + 0.5, title, fontweight="bold", **font)
        y += 1
        for line in block:
            for i, col in line:
                width = max(len(tokens[i]), 1)
                top1, top2 = route["top1"][i], route["top2"][i]
                ax.add_patch(Rectangle((col, y + 0.08), width, 0.7, edgecolor="white", linewidth=0.5,
                                       facecolor=_tint(expert_color(top1), 0.2 + 0.6 * route["weight1"][i])))
                if top2 >= 0:
                    ax.add_patch(Rectangle((col, y + 0.78), width, 0.16, facecolor=expert_color(top2),
                                           edgecolor="none"))
                ax.text(col, y + 0.43, tokens[i], **font)
            y += 1
    return fig


# ---------------------------------------------------------------- images and signals by patch


def _patch_overlay(image: np.ndarray, grid: list[int], top1: list[int], weight1: list[float]) -> np.ndarray:
    """(H, W, 4) RGBA: each patch in its top-1 expert's colour, alpha from its weight."""
    h, w = image.shape
    rows, cols = grid
    ph, pw = h // rows, w // cols
    out = np.zeros((h, w, 4))
    for p, (e, weight) in enumerate(zip(top1, weight1)):
        r, c = divmod(p, cols)
        out[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = (*expert_color(e), 0.25 + 0.4 * weight)
    return out


def _draw_sample(ax, view: dict, entry: dict, layer: int) -> None:
    route, prefix = entry["routes"][layer], view.get("prefix", 0)
    top1, weight1 = route["top1"][prefix:], route["weight1"][prefix:]
    if "signal" in entry:
        signal = np.array(entry["signal"])
        size = len(signal) // len(top1)
        for p, e in enumerate(top1):
            ax.axvspan(p * size - 0.5, (p + 1) * size - 0.5, color=expert_color(e), alpha=0.25 + 0.4 * weight1[p],
                       linewidth=0)
        ax.plot(signal, color="black", linewidth=1)
        ax.set(xlim=(-0.5, len(signal) - 0.5), xticks=[], yticks=[])
    else:
        image = np.array(entry["image"], dtype=float)
        ax.imshow(image, cmap="gray" if image.mean() > 127 else "gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax.imshow(_patch_overlay(image, view["grid"], top1, weight1), interpolation="nearest")
        ax.set(xticks=[], yticks=[])
    if prefix:
        cls = route["top1"][0]
        ax.set_title(f"[CLS] \u2192 e{cls}" if cls >= 0 else "[CLS] \u2192 none", fontsize=7, color=expert_color(cls))


def patch_pictures(views: Views) -> Figure | None:
    """Probe images (signals) with each patch coloured by its top-1 expert: one row per (label, layer)."""
    rows = _panels(views, {"image", "signal"}, "samples")
    if not rows:
        return None
    cols = max(len(view["samples"]) for _, view, _ in rows)
    signal = any(view["kind"] == "signal" for _, view, _ in rows)
    width, height = (1.9, 1.0) if signal else (1.0, 1.05)
    fig = Figure(figsize=(1.6 + width * cols, height * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), cols + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [1.6 / width, *[1] * cols]})
    for (label, view, layer), row in zip(rows, axes):
        row[0].axis("off")
        row[0].text(1, 0.5, f"{label}\nlayer {layer}", ha="right", va="center", fontsize=8, fontweight="bold")
        for ax, entry in zip(row[1:], view["samples"]):
            _draw_sample(ax, view, entry, layer)
        for ax in row[1 + len(view["samples"]):]:
            ax.axis("off")
    return fig


def decoder_groups(views: Views) -> Figure | None:
    """VAE: probe images grouped by the decoder (expert) that takes them: one row per (label, layer, expert)."""
    rows = [(label, layer, e, group) for label, view, layer in _panels(views, {"whole"}, "groups")
            for e, group in enumerate(view["groups"][layer])]
    if not rows:
        return None
    cols = max(max(len(g) for *_, g in rows), 1)
    fig = Figure(figsize=(1.6 + 0.75 * cols, 0.8 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), cols + 1, squeeze=False, gridspec_kw={"width_ratios": [2.1, *[1] * cols]})
    for (label, layer, e, group), row in zip(rows, axes):
        row[0].axis("off")
        row[0].text(1, 0.5, f"{label} \u00b7 layer {layer}\ndecoder e{e}: {len(group)}", ha="right", va="center",
                    fontsize=7, color=expert_color(e), fontweight="bold")
        for ax in row[1:]:
            ax.axis("off")
        for ax, item in zip(row[1:], group):
            image = np.array(item["image"], dtype=float)
            ax.imshow(image, cmap="gray" if image.mean() > 127 else "gray_r", vmin=0, vmax=255)
            ax.add_patch(Rectangle((-0.5, -0.5), image.shape[1], image.shape[0], fill=False,
                                   edgecolor=expert_color(e), linewidth=2.5))
    return fig


# ---------------------------------------------------------------- matrices and curves per (label, layer)


def weight_heatmaps(views: Views) -> Figure | None:
    """Routing weights, expert x token (patch; VAE: image) of one probe sample, per (label, layer)."""
    panels = _panels(views, {"text", "image", "signal", "whole"}, "weights")
    if not panels:
        return None
    widest = min(max(len(view["weights"][layer]) for _, view, layer in panels), HEATMAP_COLUMNS)
    width = min(max(3.0, 0.11 * widest + 1.2), 13.0 / _layers(views))
    fig, axes = _panel_grid(len(panels), _layers(views), width, 2.3)
    for ax, (label, view, layer) in zip(axes, panels):
        matrix = np.array(view["weights"][layer], dtype=float).T[:, :HEATMAP_COLUMNS]  # (E, T)
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        _expert_ticks(ax, matrix.shape[0])
        ax.set_title(f"{label} \u00b7 layer {layer}", fontsize=9)
        if view["kind"] == "text":
            tokens = view["samples"][0]["tokens"][:matrix.shape[1]]
            ax.set_xticks(range(len(tokens)), [shown_token(t) for t in tokens], rotation=90, fontsize=6,
                          family="monospace")
        else:
            ax.set_xlabel({"whole": "probe image", "text": "token"}.get(view["kind"], "token (0 = [CLS])"
                                                                          if view.get("prefix") else "patch"))
    fig.colorbar(image, ax=axes, label="routing weight", shrink=0.8)
    return fig


def load_over_training(views: Views) -> Figure | None:
    """Per-expert load (fraction of routed pairs) on the probe set at every traced eval, stacked."""
    panels = [(label, view, layer) for label, view, layer in _panels(views, {"text", "image", "signal", "whole"},
                                                                      "load") if view["load"][layer]["steps"]]
    if not panels:
        return None
    fig, axes = _panel_grid(len(panels), _layers(views), 3.2, 2.2)
    for ax, (label, view, layer) in zip(axes, panels):
        steps = view["load"][layer]["steps"]
        fractions = np.array(view["load"][layer]["fractions"], dtype=float).T  # (E, steps)
        colors = [expert_color(e) for e in range(fractions.shape[0])]
        if len(steps) == 1:
            share = fractions[:, 0]  # one traced eval: one stacked bar
            ax.bar(steps * len(share), share, bottom=np.cumsum(share) - share, color=colors)
            ax.set_xticks(steps)
        else:
            ax.stackplot(steps, fractions, colors=colors, linewidth=0)
        ax.set(ylim=(0, 1), xlim=(min(steps), max(steps)) if len(steps) > 1 else None, xlabel="step",
               ylabel="load (fraction)")
        ax.set_title(f"{label} \u00b7 layer {layer}", fontsize=9)
    return fig


def expert_labels(views: Views, name: str) -> Figure | None:
    """Fraction of each label value's tokens whose top-1 expert is e, expert x label value, per (label, layer)."""
    panels = [(label, view, layer) for label, view in views.items() if name in view.get("labels", {})
              for layer in range(len(view["labels"][name]["counts"]))]
    if not panels:
        return None
    values = max(len(view["labels"][name]["names"]) for _, view, _ in panels)
    fig, axes = _panel_grid(len(panels), _layers(views), max(2.6, 0.32 * values + 1.2), 2.4)
    for ax, (label, view, layer) in zip(axes, panels):
        counts = np.array(view["labels"][name]["counts"][layer], dtype=float)  # (E, C)
        share = counts / np.maximum(counts.sum(0, keepdims=True), 1)
        image = ax.imshow(share, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        _expert_ticks(ax, share.shape[0])
        ax.set_xticks(range(share.shape[1]), view["labels"][name]["names"], rotation=45, ha="right", fontsize=7)
        if share.size <= 60:
            for (e, c), v in np.ndenumerate(share):
                ax.text(c, e, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.6 else "black")
        ax.set_title(f"{label} \u00b7 layer {layer}", fontsize=9)
    fig.colorbar(image, ax=axes, label=f"fraction of the {name}'s tokens", shrink=0.8)
    return fig


def top_tokens(views: Views) -> Figure | None:
    """Text: the tokens each expert takes (top-1), per (label, layer): count and share of the token's uses."""
    panels = _panels(views, {"text"}, "top_tokens")
    if not panels:
        return None
    experts = max(len(view["top_tokens"][layer]) for _, view, layer in panels)
    fig, axes = _panel_grid(len(panels), min(_layers(views), 2), 6.6, 0.3 * experts + 0.5)
    for ax, (label, view, layer) in zip(axes, panels):
        ax.axis("off")
        ax.set(xlim=(0, 1), ylim=(experts, -0.6))
        ax.set_title(f"{label} \u00b7 layer {layer}", fontsize=10, loc="left")
        for e, tokens in enumerate(view["top_tokens"][layer]):
            ax.add_patch(Rectangle((0, e - 0.35), 0.05, 0.7, facecolor=expert_color(e), edgecolor="none"))
            ax.text(0.025, e, f"e{e}", ha="center", va="center", color="white", fontsize=8, fontweight="bold")
            words = "  ".join(shown_token(t) + (f" {share:.0%}" if share < SHARE_SHOWN else "")
                              for t, _, share in tokens[:TOKENS_SHOWN]) or "(no token)"
            ax.text(0.07, e, words, va="center", fontsize=8.5, family="monospace")
    return fig


# ---------------------------------------------------------------- the set


@dataclass
class Picture:
    stem: str
    title: str
    figure: Figure
    caption: str


def picture_set(views: Views, what: str = "seed 0 of each router") -> list[Picture]:
    """Every routing picture the views support, with a title and a caption (`what` says whose views they are)."""
    pictures: list[Picture] = []

    def add(stem: str, title: str, figure: Figure | None, caption: str) -> None:
        if figure is not None:
            pictures.append(Picture(stem, title, figure, f"{caption} ({what}; one colour per expert index in "
                                                         f"every picture.)"))

    samples = max((len(v.get("samples", [])) for v in views.values() if v.get("kind") == "text"), default=0)
    for s in range(samples):
        add(f"routing_text_{s}", f"Text routed by expert, sample {s + 1}", token_text(views, s),
            "The same probe text for every router and layer: each token's box in the colour of its top-1 expert "
            "(paler: smaller weight), the bar under it in its second expert's colour (no bar: no second expert; "
            "grey box: no expert)")
    add("routing_patches", "Images routed by expert", patch_pictures(views),
        "Probe samples with each patch in the colour of its top-1 expert (stronger: larger weight); the title names "
        "the [CLS] token's expert")
    add("routing_decoders", "Images by decoder", decoder_groups(views),
        "Probe images grouped by the decoder (expert) that reconstructs them (top-1), with how many of the shown "
        "probe images each decoder takes")
    add("routing_weights", "Routing weights of one sample", weight_heatmaps(views),
        f"Routing weight of every expert (rows) for each token, patch or image (columns; at most {HEATMAP_COLUMNS}) "
        "of the first shown probe sample (VAE: of the first probe images); 0 where the pair was not kept")
    add("routing_load", "Expert load over training", load_over_training(views),
        "Fraction of the probe set's routed pairs each expert receives at every evaluation during training, "
        "stacked: a collapsing expert thins out, a recovering one widens")
    add("routing_tokens", "What each expert takes", top_tokens(views),
        "Tokens whose probe occurrences go to the expert (top-1) most, ranked by count x share (tokens seen at "
        "least twice), with the share of the token's occurrences where it is below 95%; \u2423 is a leading space")
    names = dict.fromkeys(name for v in views.values() for name in v.get("labels", {}))
    for name in names:
        add(f"routing_{name}", f"Experts by {name}", expert_labels(views, name),
            f"Fraction of each {name}'s probe tokens whose top-1 expert is e (columns sum to 1)")
    return pictures


def report_pictures(groups: Mapping[str, Sequence[Mapping]], base: Path, out: Path,
                    vector: bool = True) -> list[Block]:
    """The report's routing pictures: for each label, the view of its lowest-seed run that has one (run folders
    under base, results.json's `run_dir`), drawn side by side into out/plots/routing_*.png (+ PDF with vector)."""
    views, seeds = {}, {}
    for label, runs in groups.items():
        for run in sorted(runs, key=lambda r: r.get("seed") if isinstance(r.get("seed"), int) else 1 << 30):
            view = read_view(base / run["run_dir"]) if isinstance(run.get("run_dir"), str) else None
            if view is not None:
                views[label], seeds[label] = view, run.get("seed", "?")
                break
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [Heading("Routing pictures")]
    if not views:
        for stale in folder.glob("routing_*.*"):
            stale.unlink()
        return [*blocks, Text(f"No run has routing pictures ({VIEW_FILE}, written by `smoe compare` and "
                              f"`smoe analyze RUN_DIR`).")]
    same = len(set(seeds.values())) == 1
    what = f"seed {next(iter(seeds.values()))} of each router" if same else \
        "seeds: " + ", ".join(f"{label} {seed}" for label, seed in seeds.items())
    blocks.append(Text(f"How the probe set's samples are routed, per router and MoE layer ({what})."))
    pictures = picture_set(views, what)
    for stale in set(folder.glob("routing_*.*")) - {folder / f"{p.stem}.{x}" for p in pictures for x in ("png", "pdf")}:
        stale.unlink()
    for picture in pictures:
        path = folder / f"{picture.stem}.png"
        save_figure(picture.figure, path, vector=vector)
        blocks += [Heading(picture.title, 3), Image(path.relative_to(out), picture.caption)]
    return blocks
