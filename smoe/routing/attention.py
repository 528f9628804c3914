"""Attention-aware routing (Nguyen, Tran, Nguyen, Baraniuk 2025, "Improving Routing in Sparse Mixture of Experts
with Graph of Tokens", arXiv 2505.00792, section 3). Mixing and options: `smoe/routing/graph.py`.
"""

from __future__ import annotations

from torch import Tensor

from smoe.routing.base import RoutingContext, router_dtype
from smoe.routing.graph import GraphOfTokensRouter, restrict_graph
from smoe.routing.registry import register_router


@register_router("attention")
class AttentionRouter(GraphOfTokensRouter):
    """Attention-Aware SMoE (Nguyen, Tran, Nguyen, Baraniuk 2025): routing mixed along the preceding attention.

    A = the head-averaged attention probabilities (B, T, T) of the attention layer before this MoE layer
    (`ctx.attn_probs`; `smoe.blocks.Block` computes them eagerly because this router sets needs_attn_probs),
    restricted to the allowed links (real tokens, causal) and renormalised; P~ = (1 - mix) P + mix A P; top-k
    of P~ (see GraphOfTokensRouter for the shared options). No extra O(T^2 d) work: A already exists.
    Reconstructed, not checked against the paper: head averaging (not per-head mixing), mix 1, top-k after
    mixing, gradients flowing into A (detach_graph=False), balance loss on P~.
    """

    needs_attn_probs = True


    def graph(self, x: Tensor, ctx: RoutingContext, batch: int, length: int, allowed: Tensor) -> Tensor:
        """ctx.attn_probs (B, T, T) restricted to the allowed links, rows renormalised."""
        attn = ctx.attn_probs
        if attn is None:
            raise ValueError("router 'attention' needs attn_probs (B, T, T), the head-averaged probabilities of the "
                             "preceding attention layer: use it inside smoe.blocks.Block or pass MoE(..., attn_probs=)")
        if tuple(attn.shape) != (batch, length, length):
            raise ValueError(f"attn_probs must have shape (B, T, T) = {(batch, length, length)} for this input, "
                             f"got {tuple(attn.shape)}")
        return restrict_graph(attn.to(router_dtype(x)), allowed)
