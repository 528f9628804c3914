"""Stroke sketches: an offline generator with hidden styles, and a loader for real QuickDraw files.

Both render with `smoe.data.raster` (the SMoE-VAE paper's QuickDraw rendering): (n, 1, 28, 28) float32 in
[0, 1], black strokes on white. Every function returns {split: (images, class (n,) long, style (n,) long)}.

The generator is our offline stand-in for the paper's five QuickDraw categories (face, cat, snowflake, pencil,
eye): each class is drawn in 3 hidden styles (sub-categories such as a cat's head vs. its whole body) from
jittered strokes, so an unsupervised router can be scored on whether its experts find classes or styles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from math import pi
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from smoe._validate import check_choice, check_int
from smoe.data.raster import read_stroke3_npz, render_strokes, stroke3_to_strokes
from smoe.data.splits import SPLITS, assign_splits, check_fractions, split_index

SketchSplits = dict[str, tuple[Tensor, Tensor, Tensor]]
Drawer = Callable[[int, np.random.Generator], list[np.ndarray]]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * pi) -> np.ndarray:
    """Points of an ellipse arc from angle a0 to a1 (y down, so angles in (0, pi) lie below the centre)."""
    t = np.linspace(a0, a1, max(5, int(28 * abs(a1 - a0) / (2 * pi))))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _line(*points: tuple[float, float]) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def _mirror(stroke: np.ndarray, about: float = 0.0) -> np.ndarray:
    """Reflected about the vertical line x = about."""
    return np.stack([2 * about - stroke[:, 0], stroke[:, 1]], axis=1)


def _face(style: int, rng: np.random.Generator) -> list[np.ndarray]:
    """0: smiley; 1: hair, straight mouth; 2: long oval with ears and nose."""
    tall = rng.uniform(1.25, 1.4) if style == 2 else rng.uniform(0.9, 1.1)
    ex, ey, er = rng.uniform(0.3, 0.4), -0.25 * tall + rng.uniform(-0.05, 0.05), rng.uniform(0.06, 0.1)
    strokes = [_arc(0, 0, 1, tall), _arc(-ex, ey, er, er), _arc(ex, ey, er, er)]
    if style == 0:
        strokes.append(_arc(0, 0.1, rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.5), 0.2 * pi, 0.8 * pi))
    elif style == 1:
        strokes.append(_line((-0.3, 0.45), (0.3, 0.45 + rng.uniform(-0.05, 0.05))))
        angles = np.linspace(1.1 * pi, 1.9 * pi, int(rng.integers(7, 11)))
        radius = np.where(np.arange(len(angles)) % 2 == 0, 1.0, rng.uniform(1.25, 1.4))
        strokes.append(np.stack([radius * np.cos(angles), radius * tall * np.sin(angles)], axis=1))
    else:
        strokes.append(_line((0, -0.1), (-0.12, 0.3), (0.06, 0.3)))
        strokes.append(_arc(0, 0.55 * tall, 0.3, 0.12, 0.1 * pi, 0.9 * pi))
        ear = _arc(1.0, 0, 0.2, 0.3, -0.5 * pi, 0.5 * pi)
        strokes += [ear, _mirror(ear)]
    return strokes


def _cat(style: int, rng: np.random.Generator) -> list[np.ndarray]:
    """0: head with ears and whiskers; 1: whole body from the side; 2: sitting, seen from the front."""
    def head(cx: float, cy: float, r: float) -> list[np.ndarray]:
        ear = _line((cx - 0.85 * r, cy - 0.5 * r), (cx - 0.7 * r, cy - 1.45 * r), (cx - 0.3 * r, cy - 0.95 * r))
        return [_arc(cx, cy, r, r), ear, _mirror(ear, cx)]

    if style == 0:
        strokes = head(0, 0, 1.0)
        strokes += [_arc(-0.35, -0.15, 0.1, 0.14), _arc(0.35, -0.15, 0.1, 0.14)]
        for j in range(3):
            whisker = _line((0.25, 0.3), (1.35, 0.05 + 0.18 * j + rng.uniform(-0.05, 0.05)))
            strokes += [whisker, _mirror(whisker)]
        return strokes
    if style == 1:
        bx, by, rx, ry = 0.3, 0.3, rng.uniform(0.9, 1.1), rng.uniform(0.4, 0.55)
        strokes = [_arc(bx, by, rx, ry), *head(-0.85, -0.3, rng.uniform(0.35, 0.45))]
        for x in (-0.35, -0.1, 0.6, 0.85):
            strokes.append(_line((x, by + 0.8 * ry), (x + rng.uniform(-0.05, 0.05), by + ry + 0.5)))
        strokes.append(_arc(bx + rx + 0.3, by - 0.1, 0.3, 0.6, pi, 1.9 * pi))
        return strokes
    strokes = [_arc(0, 0.55, rng.uniform(0.6, 0.7), 0.75), *head(0, -0.6, rng.uniform(0.4, 0.5))]
    strokes.append(_arc(0.75, 0.9, 0.45, rng.uniform(0.4, 0.6), 0.5 * pi, 2.0 * pi))
    return strokes


def _snowflake(style: int, rng: np.random.Generator) -> list[np.ndarray]:
    """0: six plain arms; 1: six arms with V branches; 2: eight arms joined by a ring."""
    arms = 8 if style == 2 else 6
    angles = rng.uniform(0, pi) + 2 * pi * np.arange(arms) / arms
    strokes = []
    for a in angles:
        tip = np.array([np.cos(a), np.sin(a)])
        strokes.append(np.stack([np.zeros(2), tip * rng.uniform(0.9, 1.1)]))
        if style == 1:
            base = 0.55 * tip
            for side in (-1, 1):
                b = a + side * pi / 4
                strokes.append(np.stack([base, base + 0.35 * np.array([np.cos(b), np.sin(b)])]))
    if style == 2:
        r = rng.uniform(0.55, 0.65)
        ring = r * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        strokes.append(np.concatenate([ring, ring[:1]]))
    return strokes


def _pencil(style: int, rng: np.random.Generator) -> list[np.ndarray]:
    """0: horizontal; 1: diagonal with an eraser band; 2: vertical, point down, with a wood line."""
    w, tip = rng.uniform(0.1, 0.16), rng.uniform(0.55, 0.7)
    strokes = [_line((tip, -w), (-1, -w), (-1, w), (tip, w)), _line((tip, -w), (1, 0), (tip, w)),
               _line((0.85, -0.3 * w), (0.85, 0.3 * w))]
    if style == 1:
        strokes.append(_line((-0.75, -w), (-0.75, w)))
    if style == 2:
        strokes.append(_line((-1, 0), (tip, 0)))
    angle = (0.0, -pi / 4, pi / 2)[style]
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    return [s @ rot for s in strokes]


def _eye(style: int, rng: np.random.Generator) -> list[np.ndarray]:
    """0: almond with iris; 1: almond, iris, pupil and lashes; 2: round, with pupil and eyebrow."""
    if style == 2:
        r = rng.uniform(0.6, 0.75)
        return [_arc(0, 0, r, r), _arc(0, 0, 0.15, 0.15),
                _arc(0, -r - 0.2, 0.9, rng.uniform(0.2, 0.35), 1.15 * pi, 1.85 * pi)]
    h = rng.uniform(0.4, 0.55)
    x = np.linspace(-1, 1, 15)
    upper, lower = np.stack([x, -h * (1 - x**2)], axis=1), np.stack([x, 0.9 * h * (1 - x**2)], axis=1)
    iris = rng.uniform(0.3, 0.4)
    strokes = [upper, lower, _arc(0, 0, iris, iris)]
    if style == 1:
        strokes.append(_arc(0, 0, 0.12, 0.12))
        for u in np.linspace(-0.6, 0.6, 5):
            y = -h * (1 - u**2)
            strokes.append(_line((u, y), (1.3 * u, y - 0.3)))
    return strokes


SKETCH_CLASSES: dict[str, Drawer] = {"face": _face, "cat": _cat, "snowflake": _snowflake, "pencil": _pencil,
                                     "eye": _eye}
MAX_STYLES = 3


def _jitter(strokes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """A hand-drawn look: random rotation and stretch of the whole sketch, a shift per stroke, noise per point."""
    a = rng.normal(0, 0.12)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag(rng.uniform(0.9, 1.1, 2))
    return [s @ m.T + rng.normal(0, 0.03, 2) + rng.normal(0, 0.012, s.shape) for s in strokes]


def generate_sketches(num_per_class: int, classes: Sequence[str] = tuple(SKETCH_CLASSES), styles: int = MAX_STYLES,
                      seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> SketchSplits:
    """Generated stroke sketches: {split: (images (n, 1, 28, 28) float32, class (n,) long, style (n,) long)}.

    num_per_class sketches per class in all, round(fraction * num_per_class) of them in valid and test; the
    first `styles` styles of each class (see the drawers' docstrings), as evenly as possible. class indexes
    `classes`, style is the hidden style within its class. Each split has its own random stream, so a split's
    sketches are fixed by (seed, split, classes, styles, its size). Order: class-major.
    """
    check_int("num_per_class", num_per_class, 1)
    check_int("styles", styles, 1, MAX_STYLES)
    check_int("seed", seed, 0)
    check_fractions(valid_fraction, test_fraction)
    if isinstance(classes, str) or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be a non-empty list of distinct names, got {list(classes)}")
    for name in classes:
        check_choice("classes", name, tuple(SKETCH_CLASSES))
    n_valid, n_test = round(valid_fraction * num_per_class), round(test_fraction * num_per_class)
    sizes = {"train": num_per_class - n_valid - n_test, "valid": n_valid, "test": n_test}
    for split, fraction in (("train", 1.0), ("valid", valid_fraction), ("test", test_fraction)):
        if fraction > 0 and sizes[split] == 0:
            raise ValueError(f"num_per_class={num_per_class} leaves the {split} split empty")

    out = {}
    for split_id, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_id])
        images, labels, style_ids = [], [], []
        for c, name in enumerate(classes):
            for s in rng.permutation(np.arange(sizes[split]) % styles):
                images.append(render_strokes(_jitter(SKETCH_CLASSES[name](int(s), rng), rng)))
                labels.append(c)
                style_ids.append(int(s))
        x = np.stack(images)[:, None] if images else np.zeros((0, 1, 28, 28), dtype=np.float32)
        out[split] = (torch.from_numpy(x), torch.tensor(labels, dtype=torch.long),
                      torch.tensor(style_ids, dtype=torch.long))
    return out


def _load_bitmaps(path: Path) -> np.ndarray:
    """QuickDraw numpy_bitmap `.npy` (n, 784) uint8, white strokes on black -> (n, 28, 28) black on white."""
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path} is not a numeric .npy array: {err}") from None
    if x.ndim == 3 and x.shape[1:] == (28, 28):
        x = x.reshape(len(x), 784)
    if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind not in "iuf" or len(x) == 0:
        raise ValueError(f"{path}: a QuickDraw bitmap file holds a non-empty (n, 784) array of 0-255 values "
                         f"(28x28 images, white strokes on black), got {x.dtype} {x.shape}")
    if x.min() < 0 or x.max() > 255:
        raise ValueError(f"{path}: bitmap values must be in [0, 255], got [{x.min()}, {x.max()}]")
    return 1.0 - x.reshape(-1, 28, 28).astype(np.float32) / 255.0


def load_quickdraw(paths: str | os.PathLike | Sequence[str | os.PathLike], limit: int | None = None,
                   eval_limit: int | None = None, valid_fraction: float = 0.1, test_fraction: float = 0.1,
                   seed: int = 0) -> SketchSplits:
    """Real QuickDraw files, one per class (class i = paths[i]): {split: (images, class, style = -1)}.

    `.npz` sketch-rnn stroke files (keys train / valid / test of stroke-3 sketches) keep their own split and
    are rendered as the SMoE-VAE paper did (`smoe.data.raster`); `limit` keeps the first `limit` train
    sketches of each file, `eval_limit` the first of valid and test (the paper: 0.1 * limit for test).
    `.npy` numpy_bitmap files (n, 784) are inverted to black on white and split by content (`valid_fraction`,
    `test_fraction`, `seed`, see `smoe.data.splits`); Google renders those bitmaps differently from the paper.
    Style is unknown for real data: -1. Wrong shapes, suffixes or missing files raise ValueError.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("paths must name at least one QuickDraw file")
    for name, value in (("limit", limit), ("eval_limit", eval_limit)):
        if value is not None:
            check_int(name, value, 1)
    parts: dict[str, list[tuple[np.ndarray, int]]] = {s: [] for s in SPLITS}
    for c, raw in enumerate(paths):
        path = Path(raw)
        if not path.is_file():
            raise ValueError(f"QuickDraw file {str(path)!r} does not exist")
        if path.suffix == ".npz":
            for split, sketches in read_stroke3_npz(path).items():
                cap = limit if split == "train" else eval_limit
                images = [render_strokes(stroke3_to_strokes(s)) for s in sketches[:cap]]
                parts[split].append((np.stack(images) if images else np.zeros((0, 28, 28), np.float32), c))
        elif path.suffix == ".npy":
            images = _load_bitmaps(path)
            try:
                split = assign_splits([im.tobytes() for im in images], None, valid_fraction, test_fraction, seed)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            for name in SPLITS:
                cap = limit if name == "train" else eval_limit
                parts[name].append((images[split_index(split, name).numpy()][:cap], c))
        else:
            raise ValueError(f"{path}: QuickDraw files must be .npz (sketch-rnn strokes) or .npy (bitmaps)")
    out = {}
    for split in SPLITS:
        x = np.concatenate([im for im, _ in parts[split]])[:, None]
        y = torch.cat([torch.full((len(im),), c, dtype=torch.long) for im, c in parts[split]])
        out[split] = (torch.from_numpy(np.ascontiguousarray(x)), y, torch.full_like(y, -1))
    return out
