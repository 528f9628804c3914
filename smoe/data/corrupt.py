"""Input corruptions for robustness evaluation: seeded functions on token ids and images, and a registry of
severity levels so that `smoe eval --corrupt NAME:LEVEL` can name them.

Legend: B sequences, T positions, V vocabulary size; n images, C channels, H x W pixels.

Text (ids: (B, T) integer, mask: (B, T) bool of real tokens; padding is never touched):
- `substitute_tokens`: a fraction `rate` of each sequence's real tokens is replaced by a different random token.
- `insert_random_tokens`: random tokens are inserted at random places so that they make up a fraction `rate` of
  each sequence's real tokens; the sequence keeps its length (its end is cut off).
- `mix_foreign_text`: a contiguous span of foreign text (another corpus in the same vocabulary), a fraction `rate`
  of each sequence, is inserted at a random place; the end is cut off.
Each returns `TokenCorruption(ids, corrupted)`. Counts are exact per sequence: round(rate * real tokens).

Images ((n, C, H, W) floating point in [0, 1]; the result stays in [0, 1]):
- `gaussian_noise` (std), `gaussian_blur` (sigma, in pixels), `occlude` (a rectangle covering a fraction of
  the area, filled with a constant).

Severity 0 of every registered corruption is the identity; levels 1-5 are in `CORRUPTIONS[name].levels`.
`corrupt_signals` applies an image corruption to data of any value range (standardised images, 1-D signals).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from smoe._validate import check_choice, check_float, check_int


class TokenCorruption(NamedTuple):
    """ids: (B, T) corrupted ids (same dtype); corrupted: (B, T) bool, True where a token is not the original's."""

    ids: Tensor
    corrupted: Tensor


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: `fn(x, **{parameter: levels[level - 1]}, ...)` is severity `level` (1..5)."""

    name: str
    kind: str
    parameter: str
    levels: tuple[float, ...]
    fn: Callable

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.fn) or "").splitlines()[0]

    @property
    def needs(self) -> frozenset[str]:
        """What `corrupt` must be given besides x (the context without a default: vocab_size, foreign)."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        return frozenset(p.name for p in params if p.default is p.empty and p.name != self.parameter)


CORRUPTIONS: dict[str, Corruption] = {}


def register_corruption(name: str, kind: str, parameter: str, levels: tuple[float, ...]):
    """Function decorator: make `fn` usable as `corrupt(x, "name:level")`."""
    check_choice("kind", kind, ("text", "image"))

    def wrap(fn: Callable) -> Callable:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is already registered")
        CORRUPTIONS[name] = Corruption(name, kind, parameter, tuple(levels), fn)
        return fn

    return wrap


def available_corruptions(kind: str | None = None) -> list[str]:
    """Registered corruption names, sorted; kind="text" or "image" filters."""
    if kind is not None:
        check_choice("kind", kind, ("text", "image"))
    return sorted(n for n, c in CORRUPTIONS.items() if kind is None or c.kind == kind)


def parse_corruption(spec: str) -> tuple[Corruption, int]:
    """"NAME:LEVEL" -> (the corruption, level); level 0 is the identity."""
    name, sep, level = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r} in {spec!r}; available: {', '.join(available_corruptions())}")
    c = CORRUPTIONS[name]
    if not sep or not level.isdigit() or int(level) > len(c.levels):
        raise ValueError(f"corruption spec must be NAME:LEVEL with LEVEL in 0..{len(c.levels)}, got {spec!r}")
    return c, int(level)


def corrupt(x: Tensor, spec: str, seed: int = 0, **context) -> Tensor:
    """Apply the corruption "NAME:LEVEL" to x with a generator seeded by `seed`; returns the corrupted x.

    context: what the function needs besides x (vocab_size, mask, foreign for text); keys it does not take are
    ignored, so one context serves every corruption of a kind.
    """
    out = _apply(x, spec, seed, context)
    return out.ids if isinstance(out, TokenCorruption) else out


def corrupt_signals(x: Tensor, spec: str, seed: int = 0) -> Tensor:
    """An image corruption "NAME:LEVEL" on x of any value range: (n, C, H, W) images or (n, C, L) signals (as
    images one pixel high). x's [min, max] is mapped to [0, 1] for the corruption, then back; level 0 returns x."""
    if not isinstance(x, Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point (n, C, H, W) or (n, C, L) tensor, got "
                         f"{getattr(x, 'dtype', type(x))} of shape {tuple(getattr(x, 'shape', ()))}")
    view = (x.unsqueeze(2) if x.dim() == 3 else x).double()  # float64: the round trip is exact in x's dtype
    low, scale = view.min(), (view.max() - view.min()).clamp_min(1e-12)
    out = corrupt((view - low) / scale, spec, seed) * scale + low
    return out.reshape(x.shape).to(x.dtype)


def corrupt_tokens(ids: Tensor, spec: str, seed: int = 0, **context) -> TokenCorruption:
    """`corrupt` for a text corruption, also returning which positions it corrupted (e.g. to score only the
    original tokens of a contaminated text)."""
    c, _ = parse_corruption(spec)
    if c.kind != "text":
        raise ValueError(f"corrupt_tokens needs a text corruption ({', '.join(available_corruptions('text'))}), "
                         f"got {c.kind} corruption {c.name!r}")
    return _apply(ids, spec, seed, context)


def _apply(x: Tensor, spec: str, seed: int, context: dict):
    c, _ = parse_corruption(spec)
    check_int("seed", seed, low=0)
    params = inspect.signature(c.fn).parameters
    kwargs = {k: v for k, v in context.items() if k in params}
    kwargs[c.parameter] = severity(spec)
    if "generator" in params:
        kwargs["generator"] = torch.Generator(device=x.device).manual_seed(seed)
    missing = [p.name for p in list(params.values())[1:] if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise ValueError(f"corruption {c.name!r} needs {', '.join(missing)} (pass it as a keyword argument)")
    return c.fn(x, **kwargs)


def severity(spec: str) -> float:
    """The parameter value of "NAME:LEVEL" (0 for level 0): rate, std, sigma or area fraction."""
    c, level = parse_corruption(spec)
    return c.levels[level - 1] if level else 0.0


# ---------------------------------------------------------------- shared helpers


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) float64 draws from `generator` (on its device), moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float64).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.randint(0, high, shape, generator=generator, device=where).to(device)


def _check_ids(ids: Tensor, mask: Tensor | None, vocab_size: int | None = None) -> Tensor:
    """Validate ids: (B, T) integer (values < vocab_size) and mask: (B, T) bool; returns the real-token mask."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be a (B, T) integer tensor, got {getattr(ids, 'dtype', type(ids))} "
                         f"of shape {tuple(getattr(ids, 'shape', ()))}")
    if vocab_size is not None:
        check_int("vocab_size", vocab_size, low=2)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(f"ids must lie in [0, vocab_size={vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
    if mask is None:
        return torch.ones_like(ids, dtype=torch.bool)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != ids.shape:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(ids.shape)} (True = real token), got "
                         f"{getattr(mask, 'dtype', type(mask))} of shape {tuple(getattr(mask, 'shape', ()))}")
    return mask


def _choose(eligible: Tensor, count: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B, T) bool: count[b] positions drawn uniformly without replacement among eligible[b]."""
    scores = _uniform(tuple(eligible.shape), generator, eligible.device).masked_fill(~eligible, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return rank < count.unsqueeze(1)


def _count(real: Tensor, rate: float) -> Tensor:
    """(B,) long: round(rate * real tokens) per sequence (half to even)."""
    return torch.round(rate * real.sum(1).double()).long()


def _insert(ids: Tensor, real: Tensor, inserted: Tensor, filler: Tensor) -> Tensor:
    """Put filler at the `inserted` real positions and the sequence's real tokens, in order, at the other ones."""
    order = torch.argsort((~real).to(torch.uint8), dim=1, stable=True)  # real positions first, in order
    keep = real & ~inserted
    source = order.gather(1, (keep.long().cumsum(1) - 1).clamp_min(0))  # the j-th kept slot takes real token j
    out = torch.where(keep, ids.gather(1, source), ids)
    return torch.where(inserted, filler.to(ids.dtype), out)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be an (n, C, H, W) floating-point tensor in [0, 1], got "
                         f"{getattr(images, 'dtype', type(images))} of shape {tuple(getattr(images, 'shape', ()))}")


# ---------------------------------------------------------------- text

TEXT_RATES = (0.025, 0.05, 0.1, 0.2, 0.4)


@register_corruption("substitute", "text", "rate", TEXT_RATES)
def substitute_tokens(ids: Tensor, vocab_size: int, rate: float, generator: torch.Generator | None = None,
                      mask: Tensor | None = None) -> TokenCorruption:
    """Random token substitution: round(rate * n) real tokens per sequence become another uniform random token."""
    real = _check_ids(ids, mask, vocab_size)
    check_float("rate", rate, low=0.0, high=1.0)
    chosen = _choose(real, _count(real, rate), generator)
    draw = _randint(vocab_size - 1, tuple(ids.shape), generator, ids.device)
    other = draw + (draw >= ids).long()  # uniform over the vocabulary without the original token
    return TokenCorruption(torch.where(chosen, other.to(ids.dtype), ids), chosen)


@register_corruption("insert", "text", "rate", TEXT_RATES)
def insert_random_tokens(ids: Tensor, vocab_size: int, rate: float, generator: torch.Generator | None = None,
                         mask: Tensor | None = None) -> TokenCorruption:
    """Contamination by insertion: uniform random tokens fill round(rate * n) random real slots of each sequence.

    The original real tokens keep their order in the other slots; those that no longer fit are cut off.
    """
    real = _check_ids(ids, mask, vocab_size)
    check_float("rate", rate, low=0.0, high=1.0)
    inserted = _choose(real, _count(real, rate), generator)
    filler = _randint(vocab_size, tuple(ids.shape), generator, ids.device)
    return TokenCorruption(_insert(ids, real, inserted, filler), inserted)


@register_corruption("foreign", "text", "rate", TEXT_RATES)
def mix_foreign_text(ids: Tensor, foreign: Tensor, rate: float, generator: torch.Generator | None = None,
                     mask: Tensor | None = None) -> TokenCorruption:
    """Contamination by foreign text: a span of round(rate * n) consecutive foreign tokens is inserted per sequence.

    foreign: (F,) token ids of another text in the same vocabulary; the span starts at a random offset of it and
    lands at a random place among the sequence's real tokens; the original tokens after it move right.
    """
    real = _check_ids(ids, mask)
    check_float("rate", rate, low=0.0, high=1.0)
    if not isinstance(foreign, Tensor) or foreign.dim() != 1 or foreign.is_floating_point():
        raise ValueError(f"foreign must be a 1-D integer tensor of token ids, got {getattr(foreign, 'shape', foreign)}")
    count, n = _count(real, rate), real.sum(1)
    if count.numel() and int(count.max()) > foreign.numel():
        raise ValueError(f"foreign must hold at least {int(count.max())} tokens for rate={rate}, got {foreign.numel()}")
    u = _uniform((2, ids.shape[0]), generator, ids.device)
    start = (u[0] * (n - count + 1)).long()  # span start, in real-token positions
    offset = (u[1] * (foreign.numel() - count + 1)).long()  # span start in the foreign text
    pos = real.long().cumsum(1) - 1  # each real token's index among the real tokens
    inserted = real & (pos >= start[:, None]) & (pos < (start + count)[:, None])
    source = (offset[:, None] + pos - start[:, None]).clamp(0, max(foreign.numel() - 1, 0))
    filler = foreign.to(ids.device)[source] if foreign.numel() else torch.zeros_like(ids)
    return TokenCorruption(_insert(ids, real, inserted, filler), inserted)


# ---------------------------------------------------------------- images


@register_corruption("noise", "image", "std", (0.08, 0.12, 0.18, 0.26, 0.38))
def gaussian_noise(images: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Additive Gaussian noise of standard deviation `std` on every pixel, clipped to [0, 1] (ImageNet-C levels)."""
    _check_images(images)
    check_float("std", std, low=0.0)
    where = generator.device if generator is not None else images.device
    noise = torch.randn(tuple(images.shape), generator=generator, device=where, dtype=images.dtype)
    return (images + std * noise.to(images.device)).clamp(0.0, 1.0)


@register_corruption("blur", "image", "sigma", (0.4, 0.6, 0.7, 0.8, 1.0))
def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of std `sigma` pixels, kernel radius ceil(4 sigma), edges extended (CIFAR-10-C levels).

    The kernel is exp(-i^2 / (2 sigma^2)) normalised to sum 1, applied along H then W; sigma 0 is the identity.
    """
    _check_images(images)
    check_float("sigma", sigma, low=0.0)
    if sigma == 0:
        return images.clone()
    radius = math.ceil(4 * sigma)
    i = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(i**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    n, c, h, w = images.shape
    x = images.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return x.reshape(n, c, h, w)


@register_corruption("occlude", "image", "fraction", (0.05, 0.1, 0.2, 0.3, 0.4))
def occlude(images: Tensor, fraction: float, generator: torch.Generator | None = None, fill: float = 0.5) -> Tensor:
    """Occlusion: a rectangle of about `fraction` of the image's pixels at a random place, set to fill.

    One patch per image, the same in every channel: a = round(fraction H W) pixels wanted, round(sqrt(a H / W))
    rows (at least 1 when a > 0) and round(a / rows) columns, so the area follows `fraction` even on small images
    (on 8x8 digits the five levels cover 4, 6, 12, 20 and 25 pixels).
    """
    _check_images(images)
    check_float("fraction", fraction, low=0.0, high=1.0)
    check_float("fill", fill, low=0.0, high=1.0)
    n, _, h, w = images.shape
    area = round(fraction * h * w)
    ph = min(max(round(math.sqrt(area * h / w)), 1), h) if area else 0
    pw = min(round(area / ph), w) if area else 0
    u = _uniform((2, n), generator, images.device)
    top, left = (u[0] * (h - ph + 1)).long(), (u[1] * (w - pw + 1)).long()
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + ph)[:, None])  # (n, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + pw)[:, None])  # (n, W)
    patch = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)  # (n, 1, H, W)
    return images.masked_fill(patch, fill)
