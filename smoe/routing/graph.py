"""Graph-of-tokens routing (Nguyen, Tran, Nguyen, Baraniuk 2025), shared by the `similarity` and `attention` routers.

Legend: N tokens (flattened), B sequences of T tokens (N = B * T), E experts, d model width.

A token's routing distribution is mixed with those of the tokens it is linked to in its own sequence:
P~ = (1 - mix) P + mix G P, where P = softmax(x W_g) is (N, E) and G is a row-stochastic (B, T, T) token graph
(a similarity matrix or the attention probabilities); top-k is then taken on P~. Token i only links to real
tokens of its own sequence, to j <= i when the model is causal, and always to itself.

Reconstructed, not checked against the paper (only its abstract was readable): the mixing P~ = G P, top-k after
mixing, the optional residual mix, the weights and the balance loss on P~ follow our method notes
(batch2 section 2); every uncertain choice is an option.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smoe._validate import check_bool, check_choice, check_float
from smoe.routing.base import Routing, RoutingContext, gate_logits
from smoe.routing.topk import SoftmaxTopKOptions, SoftmaxTopKRouter, top_k_probs


def allowed_links(ctx: RoutingContext, batch: int, length: int, device: torch.device) -> Tensor:
    """(B or 1, T, T) bool: token i may borrow routing from token j (real j, j <= i if causal, always i itself)."""
    allowed = torch.ones(1, length, length, dtype=torch.bool, device=device)
    if ctx.causal:
        allowed = allowed.tril()
    if ctx.mask is not None:
        allowed = allowed & ctx.mask.view(batch, 1, length)
    return allowed | torch.eye(length, dtype=torch.bool, device=device)


def restrict_graph(graph: Tensor, allowed: Tensor) -> Tensor:
    """graph: (B, T, T) nonnegative -> zero outside `allowed`, rows renormalised to 1.

    A row with no mass left links the token to itself only (it keeps its own distribution).
    """
    kept = graph.masked_fill(~allowed, 0.0)
    total = kept.sum(-1, keepdim=True)
    eye = torch.eye(graph.shape[-1], dtype=graph.dtype, device=graph.device)
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(graph.dtype).tiny), eye)


def mix_over_graph(probs: Tensor, graph: Tensor) -> Tensor:
    """probs: (N, E), graph: (B, T, T) with N = B * T -> (N, E), row i = sum_j G[i, j] P[j] within a sequence."""
    b, t, _ = graph.shape
    return (graph.to(probs.dtype) @ probs.view(b, t, probs.shape[1])).reshape(probs.shape)


def sparse_top_k(probs: Tensor, k: int) -> Tensor:
    """(N, E) -> (N, E): each row restricted to its k largest entries, renormalised to sum 1."""
    weight, index = top_k_probs(probs, k, normalize=True)
    return torch.zeros_like(probs).scatter(1, index, weight)


@dataclass
class GraphOptions(SoftmaxTopKOptions):
    """Options of the graph-of-tokens routers (see `GraphOfTokensRouter`)."""

    mix: float = 1.0
    neighbour_probs: str = "full"
    balance_on: str = "mixed"
    detach_graph: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_float("mix", self.mix, low=0.0, high=1.0)
        check_choice("neighbour_probs", self.neighbour_probs, ("full", "topk"))
        check_choice("balance_on", self.balance_on, ("mixed", "own"))
        check_bool("detach_graph", self.detach_graph)


class GraphOfTokensRouter(SoftmaxTopKRouter):
    """Base of `similarity` and `attention`: softmax gate, mixing over a token graph, top-k of the mix.

    Subclasses provide `graph(x, ctx, batch, length, allowed) -> (B, T, T)` row-stochastic over `allowed`.
    Options (all reconstructed; defaults are our provisional choices):
    mix: weight of the graph term, P~ = (1 - mix) P + mix G P (1 = pure mixing).
    neighbour_probs: "full" mixes the neighbours' whole distributions; "topk" mixes their top-k restrictions
    (renormalised). Top-k is always taken again on P~.
    normalize: renormalise the k kept P~ values to sum 1 (default True when k > 1, like `topk`).
    balance_on: the Switch load-balancing loss uses P~ ("mixed") or the token's own P ("own").
    detach_graph: stop gradients through G (the similarities or the attention probabilities).
    """

    Options = GraphOptions

    def graph(self, x: Tensor, ctx: RoutingContext, batch: int, length: int, allowed: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with k pairs per real token, chosen on the mixed distribution P~."""
        logits = gate_logits(x, self.gate.weight)
        probs = torch.softmax(logits, dim=-1)
        batch, length = ctx.sequences(x.shape[0])
        graph = self.graph(x, ctx, batch, length, allowed_links(ctx, batch, length, x.device))
        if self.options.detach_graph:
            graph = graph.detach()
        neighbours = probs if self.options.neighbour_probs == "full" else sparse_top_k(probs, self.options.k)
        mixed = torch.lerp(probs, mix_over_graph(neighbours, graph), self.options.mix)
        weight, index = top_k_probs(mixed, self.options.k, self.options.renormalize)
        routing = Routing.from_token_choice(index, weight, mixed, ctx, logits=logits)
        scored = routing if self.options.balance_on == "mixed" else routing.replace(probs=probs)
        routing.aux.update(self.losses(scored, logits, ctx, index))
        return routing
