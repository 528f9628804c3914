"""Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models"): the token id picks the expert.

Legend: N tokens, E experts, V vocabulary size, k experts per token.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smoe._validate import check_int
from smoe.routing.base import Router, RouterOptions, Routing, RoutingContext, router_dtype
from smoe.routing.registry import register_router


def balanced_assignment(weights: list[float], num_experts: int, k: int, seed: int) -> list[list[int]]:
    """Greedy balanced assignment: ids in order of decreasing weight (ties in a seeded random order) each take
    the k least-loaded experts (ties broken at random, seeded), and add their weight to those experts' loads.

    weights: V non-negative numbers (token frequencies, or all 1) -> V lists of k distinct experts.
    """
    rng = random.Random(seed)
    order = sorted(range(len(weights)), key=lambda v: (-weights[v], rng.random()))
    heap = [(0.0, rng.random(), e) for e in range(num_experts)]
    heapq.heapify(heap)
    table = [[] for _ in weights]
    for v in order:
        taken = [heapq.heappop(heap) for _ in range(k)]
        table[v] = [e for _, _, e in taken]
        for load, _, e in taken:
            heapq.heappush(heap, (load + weights[v], rng.random(), e))
    return table


@dataclass
class HashOptions(RouterOptions):
    """Options of `hash`: the vocabulary the token ids come from (required) and the seed of the table."""

    vocab_size: int | None = None
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.vocab_size is None:
            raise ValueError("the hash router needs vocab_size (token ids are hashed over 0..vocab_size-1)")
        check_int("vocab_size", self.vocab_size, low=1)
        check_int("seed", self.seed, low=0)


@register_router("hash")
class HashRouter(Router):
    """Hash Layers (Roller et al. 2021): a fixed, balanced hash of the token id picks the expert; no parameters.

    A lookup table (V, k) built once: ids in a seeded random order each go to the least-loaded expert, so every
    expert owns floor(V/E) or ceil(V/E) ids. `balance_by_frequency(counts)` rebuilds it with the paper's
    "Balanced assignment" (most frequent ids first, each to the emptiest expert by token count). The table is
    a buffer, so it is saved with the model. Token ids come from `RoutingContext.token_ids`
    (`MoE(x, token_ids=...)`); a call without them is an error, and so is an id outside [0, vocab_size) (on a
    GPU: a device-side assert, since checking the range there would make the host wait for the device). The
    chosen expert's output is used as is (weight 1), as in the paper. k > 1 (not in the paper, whose MultiHash
    splits each expert instead): each id takes k distinct least-loaded experts, each weighted 1/k. No aux loss.
    """

    Options = HashOptions
    example_options: ClassVar[dict[str, object]] = {"vocab_size": 64}

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.register_buffer("table", self._build([1.0] * self.options.vocab_size))

    def _build(self, weights: list[float]) -> Tensor:
        table = balanced_assignment(weights, self.num_experts, self.options.k, self.options.seed)
        return torch.tensor(table, dtype=torch.long)

    def balance_by_frequency(self, counts: Tensor) -> None:
        """Rebuild the table from token counts (V,) of the training data (Roller et al.'s Balanced assignment)."""
        if tuple(counts.shape) != (self.options.vocab_size,) or bool((counts < 0).any()):
            raise ValueError(f"counts must be ({self.options.vocab_size},) non-negative token counts, got shape "
                             f"{tuple(counts.shape)}")
        self.table.copy_(self._build(counts.double().tolist()))

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d), ctx.token_ids: (N,) -> Routing with k pairs per real token."""
        ids = ctx.token_ids
        if ids is None:
            raise ValueError("the hash router needs token ids: call MoE(x, token_ids=ids) (ids shaped like x[..., 0])")
        if ids.shape != (x.shape[0],) or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"token_ids must be an integer tensor of shape ({x.shape[0]},), got "
                             f"{ids.dtype} {tuple(ids.shape)}")
        if ctx.mask is not None:
            ids = ids.masked_fill(~ctx.mask, 0)  # padding ids may be anything; padding is never routed
        try:  # index_select (unlike indexing) refuses negative ids too; the range is read only on failure
            index = self.table.index_select(0, ids.long())  # (N, k)
        except (IndexError, RuntimeError) as e:
            raise ValueError(f"token_ids must lie in [0, vocab_size={self.options.vocab_size}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]") from e
        dtype = router_dtype(x)
        weight = torch.full(index.shape, 1.0 / self.options.k, dtype=dtype, device=x.device)
        probs = torch.zeros(x.shape[0], self.num_experts, dtype=dtype, device=x.device).scatter_(1, index, weight)
        return Routing.from_token_choice(index, weight, probs, ctx)
