import io
import zipfile

import numpy as np
import pytest
import torch

from smoe.data.raster import render_strokes, stroke3_to_strokes
from smoe.data.sketch import SKETCH_CLASSES, generate_sketches, load_quickdraw


@pytest.fixture(scope="module")
def sketches():
    return generate_sketches(60, seed=0, valid_fraction=0.1, test_fraction=0.3)


def nearest_centroid_accuracy(x_train, y_train, x_test, y_test):
    labels = sorted(set(y_train.tolist()))
    centroids = torch.stack([x_train[y_train == c].flatten(1).mean(0) for c in labels])
    pred = torch.cdist(x_test.flatten(1), centroids).argmin(1)
    return float((torch.tensor(labels)[pred] == y_test).float().mean())


def test_generated_shapes_values_and_balanced_labels(sketches):
    # 60 per class: valid round(6.0) = 6, test round(18.0) = 18, train 36; styles cycle 0, 1, 2 within a class
    sizes = {"train": 36, "valid": 6, "test": 18}
    for split, (x, c, s) in sketches.items():
        n = sizes[split]
        assert x.shape == (5 * n, 1, 28, 28) and x.dtype == torch.float32
        assert c.dtype == s.dtype == torch.long
        assert c.tolist() == [k for k in range(5) for _ in range(n)]
        assert [int((s[c == k] == j).sum()) for k in range(5) for j in range(3)] == [n // 3] * 15
        assert float(x.min()) >= 0 and float(x.max()) == 1.0
        border = torch.cat([x[:, 0, 0], x[:, 0, -1], x[:, 0, :, 0], x[:, 0, :, -1]], dim=1)
        assert torch.all(border > 0.95) and float(x.mean()) > 0.7  # white background, black strokes
        assert torch.all(x.flatten(1).min(1).values < 0.2)  # every image has ink


def test_generated_sets_are_fixed_and_splits_disjoint(sketches):
    again = generate_sketches(60, seed=0, valid_fraction=0.1, test_fraction=0.3)
    for split in sketches:
        assert all(torch.equal(a, b) for a, b in zip(sketches[split], again[split]))
    rows = {k: {im.numpy().tobytes() for im in v[0]} for k, v in sketches.items()}
    assert not (rows["train"] & rows["test"] or rows["train"] & rows["valid"] or rows["valid"] & rows["test"])
    other = generate_sketches(60, seed=1, valid_fraction=0.1, test_fraction=0.3)
    assert not torch.equal(other["test"][0], sketches["test"][0])


def test_classes_and_hidden_styles_are_visible_in_the_pixels(sketches):
    (xa, ca, sa), (xb, cb, sb) = sketches["train"], sketches["test"]
    assert nearest_centroid_accuracy(xa, ca, xb, cb) > 0.8  # chance 0.2
    for k in range(5):
        a, b = ca == k, cb == k
        assert nearest_centroid_accuracy(xa[a], sa[a], xb[b], sb[b]) > 0.8  # chance 1/3


def test_subset_of_classes_and_styles():
    x, c, s = generate_sketches(4, classes=("eye", "cat"), styles=2, seed=2, valid_fraction=0.25,
                                test_fraction=0.25)["train"]
    assert x.shape == (4, 1, 28, 28) and c.tolist() == [0, 0, 1, 1] and sorted(s.tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize(("kwargs", "match"), [({"classes": ("dog",)}, "classes"), ({"styles": 4}, "styles"),
                                               ({"classes": ()}, "classes"), ({"classes": "cat"}, "classes"),
                                               ({"num_per_class": 0}, "num_per_class"),
                                               ({"num_per_class": 3}, "valid split empty"),
                                               ({"test_fraction": 0.95}, "valid_fraction")])
def test_generator_bad_arguments(kwargs, match):
    kwargs = {"num_per_class": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_sketches(**kwargs)


def test_stroke3_to_absolute_strokes_by_hand():
    # (dx, dy, lifted): points (1, 2), (4, 2) end stroke 1; (4, 6), (5, 6), (5, 7) end stroke 2
    s3 = np.array([[1, 2, 0], [3, 0, 1], [0, 4, 0], [1, 0, 0], [0, 1, 1]])
    strokes = stroke3_to_strokes(s3)
    assert [s.tolist() for s in strokes] == [[[1, 2], [4, 2]], [[4, 6], [5, 6], [5, 7]]]


def test_render_a_horizontal_line_by_hand():
    # a line from (0, 0) to (10, 0): scale 0.8 * 56 / 10 = 4.48, drawn from x = 5.6 to 50.4 at y = 28 on the
    # 56 canvas (width 3), i.e. x 2.8 .. 25.2 at y = 14 after down-sampling to 28.
    img = render_strokes([np.array([[0.0, 0.0], [10.0, 0.0]])])
    assert img.shape == (28, 28) and img.dtype == np.float32
    dark = np.argwhere(img < 0.5)
    assert set(dark[:, 0].tolist()) <= {13, 14} and dark[:, 1].min() in (2, 3) and dark[:, 1].max() in (24, 25)
    assert np.all(img[:10] > 0.99) and np.all(img[18:] > 0.99)
    assert np.all(render_strokes([np.array([[3.0, 3.0]])]) == 1.0)  # fewer than 2 points: blank page


def write_npz(path, splits):
    arrays = {}
    for name, sketches in splits.items():
        arr = np.empty(len(sketches), dtype=object)
        arr[:] = sketches
        arrays[name] = arr
    np.savez(path, **arrays)
    return path


def square(size):
    return np.array([[0, 0, 0], [size, 0, 0], [0, size, 0], [-size, 0, 0], [0, -size, 1]], dtype=np.int16)


def test_quickdraw_npz_strokes_keep_their_split_and_render_like_the_generator(tmp_path):
    a = write_npz(tmp_path / "square.npz", {"train": [square(20), square(30), square(40)],
                                           "valid": [square(25)], "test": [square(35), square(45)]})
    b = write_npz(tmp_path / "line.npz", {"train": [np.array([[0, 0, 0], [30, 5, 1]], np.int16)],
                                         "valid": [], "test": [np.array([[0, 0, 0], [5, 30, 1]], np.int16)]})
    data = load_quickdraw([a, b])
    x, c, s = data["train"]
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    assert c.tolist() == [0, 0, 0, 1] and s.tolist() == [-1] * 4
    assert data["valid"][1].tolist() == [0] and data["test"][1].tolist() == [0, 0, 1]
    # the square is scaled to the same box whatever its size, so all train squares render identically
    assert torch.allclose(x[0], x[1], atol=1e-6) and torch.allclose(x[0], x[2], atol=1e-6)
    outline = np.array([[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]], dtype=np.float64)
    assert np.allclose(x[0, 0].numpy(), render_strokes([outline]))
    limited = load_quickdraw(a, limit=2, eval_limit=1)
    assert [len(limited[k][1]) for k in ("train", "valid", "test")] == [2, 1, 1]


def test_quickdraw_npy_bitmaps_are_inverted_and_split(tmp_path):
    rng = np.random.default_rng(0)
    bitmaps = rng.integers(0, 256, size=(40, 784), dtype=np.uint8)
    np.save(tmp_path / "cat.npy", bitmaps)
    np.save(tmp_path / "eye.npy", bitmaps[:20].reshape(20, 28, 28))
    data = load_quickdraw([tmp_path / "cat.npy", tmp_path / "eye.npy"], seed=1)
    assert sum(len(v[1]) for v in data.values()) == 60
    # 40 distinct bitmaps: valid round(4.0) = 4, test 4, train 32 (20 bitmaps: 2, 2, 16)
    assert [int((data[k][1] == 0).sum()) for k in ("train", "valid", "test")] == [32, 4, 4]
    assert [int((data[k][1] == 1).sum()) for k in ("train", "valid", "test")] == [16, 2, 2]
    expected = {(1.0 - b.astype(np.float32) / 255.0).tobytes() for b in bitmaps}
    got = {im.numpy().tobytes() for v in data.values() for im, y in zip(v[0], v[1]) if y == 0}
    assert got == expected


def test_quickdraw_bad_files(tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((5, 100), np.uint8))
    with pytest.raises(ValueError, match=r"wrong.npy.*\(n, 784\).*\(5, 100\)"):
        load_quickdraw(tmp_path / "wrong.npy")
    np.save(tmp_path / "two.npy", np.zeros((2, 784), np.uint8))
    with pytest.raises(ValueError, match=r"two\.npy: the valid split is empty"):
        load_quickdraw(tmp_path / "two.npy")
    np.save(tmp_path / "range.npy", np.full((2, 784), 300.0))
    with pytest.raises(ValueError, match="0, 255"):
        load_quickdraw(tmp_path / "range.npy")
    flat = write_npz(tmp_path / "flat.npz", {"train": [np.zeros((4, 2), np.int16)], "valid": [], "test": []})
    with pytest.raises(ValueError, match=r"flat.npz: train\[0\] must be a stroke-3 \(L, 3\)"):
        load_quickdraw(flat)
    np.savez(tmp_path / "nosplit.npz", train=np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="no 'valid' array"):
        load_quickdraw(tmp_path / "nosplit.npz")
    with pytest.raises(ValueError, match="does not exist"):
        load_quickdraw(tmp_path / "missing.npz")
    (tmp_path / "sketch.png").write_bytes(b"png")
    with pytest.raises(ValueError, match=r"\.npz \(sketch-rnn strokes\) or \.npy"):
        load_quickdraw(tmp_path / "sketch.png")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_quickdraw(tmp_path / "junk.npz")


class Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_quickdraw_npz_never_unpickles_anything_but_arrays(tmp_path, capsys):
    arr = np.empty(1, dtype=object)
    arr[0] = Exploit()
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as zf:
        for name in ("train", "valid", "test"):
            zf.writestr(f"{name}.npy", buf.getvalue())
    with pytest.raises(ValueError, match=r"builtins\.print is not a numpy array type"):
        load_quickdraw(tmp_path / "evil.npz")
    assert "pickled code ran" not in capsys.readouterr().out


def test_generator_classes_are_the_papers_categories():
    assert tuple(SKETCH_CLASSES) == ("face", "cat", "snowflake", "pencil", "eye")
