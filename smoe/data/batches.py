"""Seeded batch samplers whose only state is a torch.Generator: save `generator.get_state()` with a checkpoint,
restore it with `generator.set_state(...)`, make a new sampler, and the batches continue exactly.

Legend: B batch size, T sequence length, L stream length, n samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from smoe._validate import check_int


def lm_batches(stream: Tensor, batch_size: int, seq_len: int,
               generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (inputs (B, T), targets (B, T)) long: B windows of T + 1 tokens at uniform random starts in
    [0, L - T - 1]; targets are the inputs shifted by one. Each batch draws B integers from `generator`."""
    check_int("batch_size", batch_size, 1)
    check_int("seq_len", seq_len, 1)
    if stream.dim() != 1 or stream.dtype != torch.long:
        raise ValueError(f"stream must be a 1-D long tensor, got {stream.dtype} {tuple(stream.shape)}")
    if stream.numel() < seq_len + 1:
        raise ValueError(f"stream has {stream.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    offsets = torch.arange(seq_len + 1)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            starts = torch.randint(0, stream.numel() - seq_len, (batch_size,), generator=generator)
            windows = stream[starts[:, None] + offsets]
            yield windows[:, :-1], windows[:, 1:]

    return batches()


def tensor_batches(*tensors: Tensor, batch_size: int, generator: torch.Generator | None = None,
                   shuffle: bool = True) -> Iterator[tuple[Tensor, ...]]:
    """Batches of rows of tensors sharing their first dim n.

    shuffle=True (training): endless; each batch is B distinct rows drawn uniformly from `generator` (one
    randperm of n per batch), independently of the batches before, so the generator's state is all there is
    to save for an exact resume (no hidden position in an epoch). shuffle=False (evaluation): one pass in
    order, the last batch possibly smaller; no generator needed.
    """
    check_int("batch_size", batch_size, 1)
    if not tensors:
        raise ValueError("tensor_batches needs at least one tensor")
    n = tensors[0].shape[0] if tensors[0].dim() else 0
    if any(t.dim() == 0 or t.shape[0] != n for t in tensors):
        raise ValueError(f"tensors must share their first dim, got shapes {[tuple(t.shape) for t in tensors]}")
    if n == 0:
        raise ValueError("tensors are empty (first dim 0)")
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs a torch.Generator (for reproducible, resumable batches)")
    if shuffle and batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} rows to sample from")

    def random_batches() -> Iterator[tuple[Tensor, ...]]:
        while True:
            idx = torch.randperm(n, generator=generator)[:batch_size]
            yield tuple(t[idx] for t in tensors)

    def one_pass() -> Iterator[tuple[Tensor, ...]]:
        for lo in range(0, n, batch_size):
            yield tuple(t[lo:lo + batch_size] for t in tensors)

    return random_batches() if shuffle else one_pass()


def map_tensors(fn: Callable[[Tensor], Tensor], batch):
    """`batch` with fn applied to every tensor in it (tensors, tuples, lists and dicts of them, nested); other
    values are kept as they are."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(fn, b) for b in batch)
    if isinstance(batch, dict):
        return {k: map_tensors(fn, v) for k, v in batch.items()}
    return batch
