"""USMoE: unified competitive routing (Do, Le, Tran 2025, "Sparse Mixture of Experts as Unified Competitive
Learning", arXiv 2503.22996; official code giangdip2410/USMoE).

Legend: N tokens, E experts, k experts per token on average, P pools of L tokens, A kept pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smoe._validate import check_choice, check_float
from smoe.routing.base import Router, RouterOptions, Routing, RoutingContext, StaticFloat, gate_logits, integral
from smoe.routing.registry import register_router

POOLS = ("auto", "sequence", "batch_position", "batch")


@dataclass
class USMoEOptions(RouterOptions):
    """Options of `usmoe` (see `USMoERouter`); budget_factor must also be <= E / k."""

    k: int = 2
    score_mix: float = 0.5
    pool: str = "auto"
    budget_factor: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_float("score_mix", self.score_mix, low=0.0, high=1.0)
        check_choice("pool", self.pool, POOLS)
        check_float("budget_factor", self.budget_factor, low=0.0, low_open=True)

    def check_experts(self, num_experts: int) -> None:
        super().check_experts(num_experts)
        check_float("budget_factor", self.budget_factor, high=num_experts / self.k)


@register_router("usmoe")
class USMoERouter(Router):
    """USMoE (Do, Le, Tran 2025): unified softmax/sigmoid score, global top-(pool x k) budget, 0..E experts a token.

    H = x W_g; U = (1 - score_mix) softmax(H) + score_mix (2/E) sigmoid(H) (the 2/E makes sigmoid(0) score 1/E).
    Each pool of L real tokens keeps its round(budget_factor * k * L) highest (token, expert) entries of U
    (ties: earlier token, then lower expert), so a token gets 0..E experts; the kept U values are the combine
    weights, not renormalised; a token with no expert gets output 0 (the residual carries it). No aux loss.
    pool: "sequence" (the tokens of one sequence; a token's routing sees later tokens), "batch_position" (the
    tokens at one position across the batch: causal-safe, as in the official from-scratch LM runs, but couples
    sequences), "batch" (every token of the call), "auto" (default: batch_position when the model is causal,
    else sequence). budget_factor < 1 is the fractional budget (fewer pairs than token choice).
    As in the official code: score_mix 0.5, weights = U, no renormalisation, no balance loss. `probs` of the
    Routing holds U itself (rows need not sum to 1). budget_factor is our name for the fractional budget of the
    paper's later versions (its exact use there is not verified).
    """

    Options = USMoEOptions
    budget_factor = StaticFloat()

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    def unified_score(self, logits: Tensor) -> Tensor:
        """logits: (N, E) -> U: (N, E)."""
        token_choice = torch.softmax(logits, dim=-1)
        pair_score = torch.sigmoid(logits) * (2.0 / self.num_experts)
        return torch.lerp(token_choice, pair_score, self.options.score_mix)

    def pools(self, ctx: RoutingContext, num_tokens: int, device: torch.device) -> Tensor:
        """(P, L) long: the token ids of each pool."""
        pool = self.options.pool if self.options.pool != "auto" else ("batch_position" if ctx.causal else "sequence")
        batch, length = ctx.sequences(num_tokens)
        ids = torch.arange(num_tokens, device=device).view(batch, length)
        if pool == "sequence":
            return ids
        return ids.t() if pool == "batch_position" else ids.reshape(1, -1)

    def budget(self, real_tokens: int | Tensor) -> int | Tensor:
        """Pairs a pool of that many real tokens keeps: min(round(budget_factor * k * L), L * E), half to even; an
        int, or a long tensor for a long tensor of counts."""
        real = real_tokens.double() if isinstance(real_tokens, Tensor) else real_tokens
        kept = integral(self.budget_factor * self.options.k * real, "round")
        cap = real_tokens * self.num_experts
        return torch.minimum(kept, cap) if isinstance(kept, Tensor) else min(kept, cap)

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with a budget of pairs per pool.

        Candidates: the budget(L) best entries of every pool, of which the first budget(real tokens) are kept (all
        of them without padding).
        """
        e = self.num_experts
        logits = gate_logits(x, self.gate.weight)
        score = self.unified_score(logits)
        pools = self.pools(ctx, x.shape[0], x.device)  # (P, L)
        size = self.budget(pools.shape[1])
        real = torch.ones_like(pools, dtype=torch.bool) if ctx.mask is None else ctx.mask[pools]
        pooled = score[pools].masked_fill(~real[..., None], float("-inf")).flatten(1)  # (P, L * E)
        position = torch.sort(pooled, dim=1, descending=True, stable=True).indices[:, :size]  # (P, size)
        keep = None
        if ctx.mask is not None:
            keep = torch.arange(size, device=x.device) < self.budget(real.sum(1))[:, None]
        token, expert = pools.gather(1, position // e).reshape(-1), (position % e).reshape(-1)
        pair_order = torch.argsort(token * e + expert)
        token, expert = token[pair_order], expert[pair_order]
        return Routing(token=token, expert=expert, weight=score[token, expert], probs=score, num_experts=e,
                       logits=logits, mask=ctx.mask, keep=None if keep is None else keep.reshape(-1)[pair_order])
