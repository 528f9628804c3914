import random

import numpy as np
import pytest
import torch

from smoe.data.vision import load_digits, load_mnist1d, patchify, unpatchify


def assert_disjoint(splits):
    rows = {name: {x.numpy().tobytes() for x in xs} for name, (xs, _) in splits.items()}
    assert not (rows["train"] & rows["valid"] or rows["train"] & rows["test"] or rows["valid"] & rows["test"])


def test_digits_shapes_values_split_and_labels():
    data = load_digits()
    assert {k: len(v[1]) for k, v in data.items()} == {"train": 1259, "valid": 179, "test": 359}
    for x, y in data.values():
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.long
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert set(y.tolist()) == set(range(10))
    # grey levels are 0..16 in sklearn: every value is a multiple of 1/16
    x = data["train"][0]
    assert torch.equal(x * 16, (x * 16).round())
    assert_disjoint(data)
    from sklearn.datasets import load_digits as sklearn_digits

    ref = sklearn_digits()
    pairs = sorted((x.numpy().tobytes(), int(y)) for xs, ys in data.values() for x, y in zip(xs, ys))
    expected = sorted(((im / 16.0).astype(np.float32).reshape(1, 8, 8).tobytes(), int(y))
                      for im, y in zip(ref.images, ref.target))
    assert pairs == expected  # every sample once, with its own label
    again = load_digits()
    assert all(torch.equal(data[s][0], again[s][0]) and torch.equal(data[s][1], again[s][1]) for s in data)


def test_mnist1d_small_generated_set_keeps_the_package_split_and_global_rngs():
    random.seed(5)
    np.random.seed(5)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    data = load_mnist1d(num_samples=200, seed=3)
    assert (random.random(), np.random.rand()) == (expected_py, expected_np)
    # 200 samples: the package's last 20% (40) is test; valid = round(0.1 * m) per class of the other 160
    assert len(data["test"][1]) == 40 and len(data["train"][1]) + len(data["valid"][1]) == 160
    assert 10 <= len(data["valid"][1]) <= 20
    for x, y in data.values():
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 40) and y.dtype == torch.long
    assert set(data["train"][1].tolist()) == set(range(10))
    assert_disjoint(data)
    again = load_mnist1d(num_samples=200, seed=3)
    assert torch.equal(again["valid"][0], data["valid"][0])
    assert not torch.equal(load_mnist1d(num_samples=200, seed=4)["test"][0], data["test"][0])


@pytest.mark.parametrize(("kwargs", "match"), [({"num_samples": 205}, "multiple of 10"),
                                               ({"num_samples": 0}, "num_samples"),
                                               ({"seed": -1}, "seed"),
                                               ({"valid_fraction": 1.0}, "valid_fraction")])
def test_mnist1d_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_mnist1d(**kwargs)


def test_patchify_image_by_hand():
    # one 1-channel 4x4 image holding 0..15 row-major, 2x2 patches in row-major patch order:
    # top-left [0, 1, 4, 5], top-right [2, 3, 6, 7], bottom-left [8, 9, 12, 13], bottom-right [10, 11, 14, 15]
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert patchify(x, 2).tolist() == [[[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]]


def test_patchify_signal_by_hand_channel_first():
    # 2 channels of length 4, patches of 2: patch j = (ch0[2j], ch0[2j+1], ch1[2j], ch1[2j+1])
    x = torch.tensor([[[0.0, 1, 2, 3], [10, 11, 12, 13]]])
    assert patchify(x, 2).tolist() == [[[0, 1, 10, 11], [2, 3, 12, 13]]]


@pytest.mark.parametrize(("shape", "p", "out"), [((5, 1, 8, 8), 4, (5, 4, 16)), ((5, 3, 8, 12), 2, (5, 24, 12)),
                                                 ((5, 1, 40), 4, (5, 10, 4)), ((5, 2, 40), 8, (5, 5, 16))])
def test_patchify_shapes_and_inverse(shape, p, out):
    x = torch.randn(shape)
    patches = patchify(x, p)
    assert patches.shape == out
    assert torch.equal(unpatchify(patches, shape[1:], p), x)


def test_patchify_bad_input():
    with pytest.raises(ValueError, match="must divide"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match="images"):
        patchify(torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="patch_size"):
        patchify(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="patches must be"):
        unpatchify(torch.zeros(1, 4, 15), (1, 8, 8), 4)
