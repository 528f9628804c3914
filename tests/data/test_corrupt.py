import itertools

import pytest
import torch

from smoe.data.corrupt import (
    CORRUPTIONS,
    available_corruptions,
    corrupt,
    corrupt_signals,
    corrupt_tokens,
    gaussian_blur,
    gaussian_noise,
    insert_random_tokens,
    mix_foreign_text,
    occlude,
    parse_corruption,
    severity,
    substitute_tokens,
)

V = 50


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def text_batch(dtype=torch.long):
    """(3, 40) ids with padding: the rows have 40, 30 and 11 real tokens."""
    ids = torch.randint(0, V, (3, 40), generator=gen(1)).to(dtype)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False
    mask[2, 11:] = False
    return ids, mask


CONTEXT = {"vocab_size": V, "foreign": torch.arange(1000, 1100) % V}


def sample(kind, dtype=None):
    if kind == "text":
        return text_batch(dtype or torch.long)[0]
    return torch.rand(4, 3, 12, 12, generator=gen(2), dtype=dtype or torch.float32)


# ---------------------------------------------------------------- registry-level properties of every corruption

@pytest.mark.parametrize("name", available_corruptions())
def test_level_zero_is_identity(name):
    x = sample(CORRUPTIONS[name].kind)
    assert torch.equal(corrupt(x, f"{name}:0", seed=3, **CONTEXT), x)


@pytest.mark.parametrize("name", available_corruptions())
def test_same_seed_same_output_other_seed_other_output(name):
    x = sample(CORRUPTIONS[name].kind)
    a, b = corrupt(x, f"{name}:5", seed=3, **CONTEXT), corrupt(x, f"{name}:5", seed=3, **CONTEXT)
    assert torch.equal(a, b) and not torch.equal(a, x)
    if name != "blur":  # blur draws nothing
        assert not torch.equal(a, corrupt(x, f"{name}:5", seed=4, **CONTEXT))


@pytest.mark.parametrize("name", available_corruptions())
@pytest.mark.parametrize("level", [1, 3, 5])
def test_shape_and_dtype_kept(name, level):
    kind = CORRUPTIONS[name].kind
    for dtype in ((torch.int32, torch.long) if kind == "text" else (torch.float32, torch.float64)):
        x = sample(kind, dtype)
        out = corrupt(x, f"{name}:{level}", **CONTEXT)
        assert out.shape == x.shape and out.dtype == dtype
        if kind == "text":
            assert int(out.min()) >= 0 and int(out.max()) < V
        else:
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_registry_lists_and_levels():
    assert available_corruptions("text") == ["foreign", "insert", "substitute"]
    assert available_corruptions("image") == ["blur", "noise", "occlude"]
    for c in CORRUPTIONS.values():
        assert len(c.levels) == 5 and list(c.levels) == sorted(c.levels) and c.levels[0] > 0 and c.summary
    c, level = parse_corruption("noise:3")
    assert c.name == "noise" and level == 3 and c.levels[2] == 0.18


@pytest.mark.parametrize("spec, match", [
    ("nope:1", "unknown corruption 'nope'.*available: blur, foreign"),
    ("noise", "NAME:LEVEL with LEVEL in 0..5"),
    ("noise:6", "NAME:LEVEL with LEVEL in 0..5"),
    ("noise:-1", "NAME:LEVEL"),
    ("noise:high", "NAME:LEVEL"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        corrupt(torch.rand(1, 1, 4, 4), spec)


def test_bad_arguments():
    ids, mask = text_batch()
    with pytest.raises(ValueError, match="needs vocab_size"):
        corrupt(ids, "substitute:1")
    with pytest.raises(ValueError, match="needs foreign"):
        corrupt(ids, "foreign:1")
    with pytest.raises(ValueError, match="rate must be <= 1"):
        substitute_tokens(ids, V, 1.5)
    with pytest.raises(ValueError, match=r"ids must be a \(B, T\) integer tensor"):
        substitute_tokens(ids.float(), V, 0.1)
    with pytest.raises(ValueError, match=r"ids must be a \(B, T\) integer tensor"):
        insert_random_tokens(ids[0], V, 0.1)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=10\)"):
        substitute_tokens(ids, 10, 0.1)
    with pytest.raises(ValueError, match="vocab_size must be >= 2"):
        substitute_tokens(torch.zeros(1, 3, dtype=torch.long), 1, 0.1)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(3, 40\)"):
        insert_random_tokens(ids, V, 0.1, mask=mask[:, :5])
    with pytest.raises(ValueError, match="foreign must hold at least 16 tokens"):
        mix_foreign_text(ids, torch.arange(5), 0.4)
    with pytest.raises(ValueError, match=r"images must be an \(n, C, H, W\) floating-point"):
        gaussian_noise(torch.rand(3, 8, 8), 0.1)
    with pytest.raises(ValueError, match="std must be >= 0"):
        gaussian_noise(torch.rand(1, 1, 8, 8), -0.1)
    with pytest.raises(ValueError, match="fraction must be <= 1"):
        occlude(torch.rand(1, 1, 8, 8), 2.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        available_corruptions("audio")


# ---------------------------------------------------------------- text

def test_substitution_changes_exactly_the_requested_count():
    ids, mask = text_batch()
    out, changed = substitute_tokens(ids, V, 0.2, gen(), mask)
    # round(.2 * 40) = 8, round(.2 * 30) = 6, round(.2 * 11) = 2 (2.2)
    assert changed.sum(1).tolist() == [8, 6, 2]
    assert torch.equal(changed, out != ids)  # a substituted token always differs from the original
    assert not changed[~mask].any()
    full, changed = substitute_tokens(ids, V, 1.0, gen(), mask)
    assert torch.equal(changed, mask) and torch.equal(full[~mask], ids[~mask])


def test_substitution_draws_every_other_token_uniformly():
    ids = torch.zeros(1, 40000, dtype=torch.long)
    out, _ = substitute_tokens(ids, 5, 1.0, gen())
    freq = torch.bincount(out[0], minlength=5).double() / 40000
    assert freq[0] == 0 and torch.allclose(freq[1:], torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)


def test_insertion_keeps_the_original_tokens_in_order():
    ids, mask = text_batch()
    out, inserted = insert_random_tokens(ids, V, 0.25, gen(), mask)
    assert inserted.sum(1).tolist() == [10, 8, 3]  # round(10.0), round(7.5) = 8 (half to even), round(2.75)
    assert not inserted[~mask].any() and torch.equal(out[~mask], ids[~mask])
    for b in range(3):
        n, m = int(mask[b].sum()), int(inserted[b].sum())
        kept = out[b][mask[b] & ~inserted[b]]
        assert torch.equal(kept, ids[b][mask[b]][: n - m])  # the end that no longer fits is cut off


def test_foreign_text_is_one_contiguous_span_of_the_foreign_stream():
    ids, mask = text_batch()
    foreign = torch.arange(100, 140)  # disjoint from ids (< 50): the foreign tokens are recognisable
    out, inserted = mix_foreign_text(ids, foreign, 0.3, gen(), mask)
    assert inserted.sum(1).tolist() == [12, 9, 3]  # round(12), round(9), round(3.3)
    assert torch.equal(inserted, out >= 100)
    for b in range(3):
        pos = inserted[b].nonzero().flatten()
        span = out[b][pos]
        assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + len(pos)))  # contiguous in the sequence
        assert torch.equal(span, torch.arange(int(span[0]), int(span[0]) + len(span)))  # contiguous in foreign
        n, m = int(mask[b].sum()), len(pos)
        assert torch.equal(out[b][mask[b] & ~inserted[b]], ids[b][mask[b]][: n - m])
    assert torch.equal(out[~mask], ids[~mask])


@pytest.mark.parametrize("fn", [substitute_tokens, insert_random_tokens])
def test_text_rate_zero_is_identity(fn):
    ids, mask = text_batch()
    out, changed = fn(ids, V, 0.0, gen(), mask)
    assert torch.equal(out, ids) and not changed.any()


# ---------------------------------------------------------------- images

def test_gaussian_noise_has_the_requested_std():
    x = torch.full((64, 1, 16, 16), 0.5, dtype=torch.float64)  # 0.5 / 0.08 = 6 std from the clip: no clipping
    delta = gaussian_noise(x, 0.08, gen()) - x
    assert abs(float(delta.mean())) < 0.003 and float(delta.std()) == pytest.approx(0.08, rel=0.03)
    assert torch.equal(gaussian_noise(x, 0.0, gen()), x)


def test_gaussian_blur_of_a_point_by_hand():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    # sigma .5: radius ceil(2) = 2, weights exp(-2 i^2) for i = -2..2: e^-8, e^-2, 1, e^-2, e^-8;
    # sum = 1 + 2 * .1353353 + 2 * .0003355 = 1.2713415 -> k = (.0002639, .1064508, .7865707, .1064508, .0002639)
    k = torch.tensor([0.0002639, 0.1064508, 0.7865707, 0.1064508, 0.0002639], dtype=torch.float64)
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[2:7, 2:7] = torch.outer(k, k)
    out = gaussian_blur(x, 0.5)[0, 0]
    assert torch.allclose(out, expected, atol=1e-6)
    assert out[4, 4] == pytest.approx(0.7865707**2, abs=1e-6)  # 0.6186935


def test_gaussian_blur_keeps_constants_and_mass():
    flat = torch.full((2, 3, 8, 8), 0.3, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(flat, 2.5), flat)  # kernel (radius 10) wider than the image
    x = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    x[0, 0, 7, 7] = 1.0
    assert float(gaussian_blur(x, 1.0).sum()) == pytest.approx(1.0)  # interior point: nothing leaves the image


# a = round(f * 784) pixels: rows = round(sqrt(a)), columns = round(a / rows)
@pytest.mark.parametrize("fraction, height, width", [(0.25, 14, 14), (0.1, 9, 9), (0.4, 18, 17)])
def test_occlusion_covers_the_requested_area(fraction, height, width):
    x = torch.zeros(16, 2, 28, 28)
    out = occlude(x, fraction, gen(), fill=0.5)
    covered = out == 0.5
    assert torch.equal(covered[:, 0], covered[:, 1])  # the same patch in every channel
    per_image = covered[:, 0].flatten(1).sum(1)
    assert per_image.tolist() == [height * width] * 16
    assert abs(height * width / 784 - fraction) < 0.02
    for img in covered[:, 0]:  # one rectangle
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert len(rows) == height and len(cols) == width and int(rows[-1] - rows[0]) == height - 1


# what each task corrupts: LM windows (lm-bbc tiny: 64 + 1 tokens), documents (cls-bbc: 128), 8x8 digits,
# 28x28 sketches, MNIST-1D signals (1 x 40)
@pytest.mark.parametrize("name, shape", [
    *((n, (4, t)) for n in ("substitute", "insert") for t in (65, 128)),
    *((n, (4, 1, side, side)) for n in ("noise", "blur", "occlude") for side in (8, 28)),
    *((n, (4, 1, 40)) for n in ("noise", "blur"))])
def test_every_level_differs_on_every_task(name, shape):
    """Level L + 1 corrupts more than level L on the inputs of every task (no two levels are the same input)."""
    def change(level: int) -> float:  # corrupted tokens, occluded pixels, or the total change of the values
        if len(shape) == 2:
            return int(corrupt_tokens(torch.randint(0, V, shape, generator=gen()), f"{name}:{level}", seed=3,
                                      vocab_size=V).corrupted.sum())
        x = torch.rand(shape, generator=gen())
        out = corrupt_signals(x, f"{name}:{level}", seed=3)
        return int((out != x).sum()) if name == "occlude" else float((out - x).abs().sum())

    changes = [change(level) for level in range(6)]
    assert changes[0] == 0 and all(a < b for a, b in itertools.pairwise(changes)), changes


def test_corrupt_tokens_says_which_positions_changed():
    ids, mask = text_batch()
    out = corrupt_tokens(ids, "substitute:4", seed=2, vocab_size=V, mask=mask)
    assert torch.equal(out.ids, corrupt(ids, "substitute:4", seed=2, vocab_size=V, mask=mask))
    assert torch.equal(out.corrupted, out.ids != ids)  # substitution always changes the token
    assert out.corrupted.sum(1).tolist() == [8, 6, 2]  # round(0.2 * (40, 30, 11)), half to even
    assert not corrupt_tokens(ids, "insert:0", vocab_size=V, mask=mask).corrupted.any()
    with pytest.raises(ValueError, match="needs a text corruption"):
        corrupt_tokens(ids, "noise:1")


def test_severity_is_the_level_parameter():
    assert severity("noise:2") == 0.12 and severity("substitute:5") == 0.4 and severity("blur:0") == 0.0
    with pytest.raises(ValueError, match=r"LEVEL in 0\.\.5"):
        severity("blur:6")


def test_corrupt_signals_works_on_any_value_range_and_on_1d_signals():
    x = torch.randn(6, 1, 40, generator=gen(4)) * 3 + 1  # standardised-looking 1-D signals
    assert torch.equal(corrupt_signals(x, "noise:0"), x)
    noisy = corrupt_signals(x, "noise:3", seed=1)
    assert noisy.shape == x.shape and noisy.dtype == x.dtype and not torch.equal(noisy, x)
    assert float(noisy.min()) >= float(x.min()) - 1e-5 and float(noisy.max()) <= float(x.max()) + 1e-5  # clipped
    # on [0, 1] images it is the corruption itself
    images = torch.rand(2, 1, 8, 8, generator=gen(5))
    images[0, 0, 0, 0], images[0, 0, 0, 1] = 0.0, 1.0
    assert torch.allclose(corrupt_signals(images, "blur:3"), corrupt(images, "blur:3"), atol=1e-6)
    with pytest.raises(ValueError, match="floating-point"):
        corrupt_signals(torch.zeros(3, 4, dtype=torch.long), "noise:1")
