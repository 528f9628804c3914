"""QuickDraw strokes: reading sketch-rnn `.npz` files safely and rendering strokes to 28x28 as SMoE-VAE did.

Rendering (after the SMoE-VAE authors' `QuickDrawImageDataset`, strajdzsha/smoe-vae `vae/datasets.py`, re-written):
a 56x56 white canvas; the sketch's bounding box scaled by 0.8 * 56 / max(width, height) and centred; each
stroke of >= 2 points drawn in black with width 3, segments of strokes with > 2 points that are longer than
10 px drawn as int(length / 5) equal pieces; LANCZOS down-sampling to 28x28; values / 255. Result: black
strokes (near 0) on white (1.0). One deviation: a sketch with fewer than 2 points gives a blank white image
(the authors' code returns an all-black one).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 28  # output side
CANVAS = 2 * SIZE  # drawing side (2x super-sampling)
FILL = 0.8  # fraction of the canvas the longer side of the bounding box spans
LINE_WIDTH = max(3, CANVAS // 28)
SUBDIVIDE_OVER, SUBDIVIDE_STEP = 10.0, 5.0  # px

Strokes = Sequence[np.ndarray]  # each (m, 2) absolute x, y points (y down), one pen-down stroke


def stroke3_to_strokes(sketch: np.ndarray) -> list[np.ndarray]:
    """sketch-rnn stroke-3 (L, 3) rows (dx, dy, pen_lifted) -> absolute strokes; a stroke ends at pen_lifted=1."""
    points = np.cumsum(np.asarray(sketch[:, :2], dtype=np.float64), axis=0)
    ends = np.flatnonzero(sketch[:, 2] == 1) + 1
    return [s for s in np.split(points, ends) if len(s)]


def render_strokes(strokes: Strokes) -> np.ndarray:
    """(28, 28) float32 in [0, 1], black strokes on white."""
    img = Image.new("L", (CANVAS, CANVAS), color=255)
    points = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes] or [np.zeros((0, 2))])
    if len(points) >= 2:
        lo, hi = points.min(0), points.max(0)
        extent = (hi - lo).max()
        scale = FILL * CANVAS / extent if extent > 0 else 1.0
        offset = CANVAS / 2 - (lo + hi) / 2 * scale
        draw = ImageDraw.Draw(img)
        for stroke in strokes:
            xy = np.asarray(stroke, dtype=np.float64).reshape(-1, 2) * scale + offset
            if len(xy) == 2:
                draw.line([tuple(p) for p in xy], fill=0, width=LINE_WIDTH)
            elif len(xy) > 2:
                for a, b in pairwise(xy):
                    length = float(np.hypot(*(b - a)))
                    pieces = int(length / SUBDIVIDE_STEP) if length > SUBDIVIDE_OVER else 1
                    cuts = a + np.linspace(0.0, 1.0, pieces + 1)[:, None] * (b - a)
                    for p, q in pairwise(cuts):
                        draw.line([tuple(p), tuple(q)], fill=0, width=LINE_WIDTH)
    img = img.resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array-unpickling function, wherever numpy keeps it
_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
                   ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
                   ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else, so a crafted file cannot run code (np.load(allow_pickle=True)
    would)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array type")
        return _PICKLE_ALLOWED[(module, name)]


def _read_member(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        _, _, dtype = read_header(f)
        if dtype.hasobject:
            return np.asarray(_NumpyOnlyUnpickler(f, encoding="latin1").load())
    with zf.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def read_stroke3_npz(path: Path) -> dict[str, list[np.ndarray]]:
    """{split: [stroke-3 (L, 3) int arrays]} from a sketch-rnn `.npz` (keys train, valid, test, each an
    object array of sketches). Anything else raises ValueError naming the path."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz file: {err}") from None
    out = {}
    with zf:
        for split in ("train", "valid", "test"):
            if f"{split}.npy" not in zf.namelist():
                raise ValueError(f"{path} has no {split!r} array; a sketch-rnn .npz holds train, valid and test")
            try:
                sketches = _read_member(zf, f"{split}.npy")
            except (ValueError, pickle.UnpicklingError, EOFError) as err:
                raise ValueError(f"{path}: cannot read {split!r} as an array of sketches: {err}") from None
            if sketches.ndim not in (1, 3):
                raise ValueError(f"{path}: {split!r} must be a list of sketches, got shape {sketches.shape}")
            for i, sketch in enumerate(sketches):
                if not (isinstance(sketch, np.ndarray) and sketch.ndim == 2 and sketch.shape[1] == 3
                        and sketch.dtype.kind in "iuf"):
                    shape = getattr(sketch, "shape", type(sketch).__name__)
                    raise ValueError(f"{path}: {split}[{i}] must be a stroke-3 (L, 3) numeric array "
                                     f"(dx, dy, pen_lifted), got {shape}")
            out[split] = list(sketches)
    return out
