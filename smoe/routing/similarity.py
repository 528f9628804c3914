"""Similarity-aware routing (Nguyen, Tran, Nguyen, Baraniuk 2025, "Improving Routing in Sparse Mixture of Experts
with Graph of Tokens", arXiv 2505.00792, section 2). Mixing and options: `smoe/routing/graph.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_choice, check_float
from smoe.init import ParamGenerators, global_rng
from smoe.routing.base import RoutingContext, router_dtype
from smoe.routing.graph import GraphOfTokensRouter, GraphOptions
from smoe.routing.registry import register_router


@dataclass
class SimilarityOptions(GraphOptions):
    """Options of `similarity`: the graph options plus the token similarity and its temperature."""

    similarity: str = "dot"
    temperature: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_choice("similarity", self.similarity, ("dot", "cosine", "bilinear"))
        check_float("temperature", self.temperature, low=0.0, low_open=True)


@register_router("similarity")
class SimilarityRouter(GraphOfTokensRouter):
    """Similarity-Aware SMoE (Nguyen, Tran, Nguyen, Baraniuk 2025): mix routing with similar tokens', then top-k.

    S = softmax_j(sim(x_i, x_j) / temperature) over the tokens of the same sequence (causal mask for decoders,
    padding masked), P~ = (1 - mix) P + mix S P, top-k of P~ (see GraphOfTokensRouter for the shared options).
    similarity: "dot" x_i.x_j / sqrt(d) (default), "cosine", or "bilinear" x_i W_s x_j / sqrt(d) with a learned
    W_s (d, d) initialised to the identity. Computed on the layer input (the LayerNorm-ed stream in a pre-norm
    block). Cost O(B T^2 d) per call.
    Reconstructed, not checked against the paper: the form of sim, temperature 1, mix 1, top-k after mixing,
    weights renormalised over the k kept, balance loss on P~.
    """

    Options = SimilarityOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.sim_proj = nn.Linear(d_model, d_model, bias=False) if self.options.similarity == "bilinear" else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generators: ParamGenerators = global_rng) -> None:
        """The bilinear similarity starts at the identity (`smoe.init`; the gate is nn.Linear's)."""
        if self.sim_proj is not None:
            nn.init.eye_(self.sim_proj.weight)

    def graph(self, x: Tensor, ctx: RoutingContext, batch: int, length: int, allowed: Tensor) -> Tensor:
        """(B, T, T) row-stochastic similarity graph over the allowed links."""
        z = x.to(router_dtype(x)).view(batch, length, x.shape[-1])
        if self.options.similarity == "cosine":
            z = F.normalize(z, dim=-1)
            scores = z @ z.transpose(1, 2)
        else:
            query = z if self.sim_proj is None else F.linear(z, self.sim_proj.weight.to(z.dtype))
            scores = query @ z.transpose(1, 2) / math.sqrt(z.shape[-1])
        scores = (scores / self.options.temperature).masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores, dim=-1)
