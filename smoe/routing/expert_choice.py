"""Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smoe._validate import check_float
from smoe.routing.base import Router, RouterOptions, Routing, RoutingContext, StaticFloat, gate_logits, integral
from smoe.routing.losses import z_loss
from smoe.routing.registry import register_router


@dataclass
class ExpertChoiceOptions(RouterOptions):
    """Options of `expert_choice`: k sets the capacity C = capacity_factor * N * k / E."""

    k: int = 2
    capacity_factor: float = 1.0
    z_loss_coef: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_float("capacity_factor", self.capacity_factor, low=0.0, low_open=True)
        check_float("z_loss_coef", self.z_loss_coef, low=0.0)

    def check_experts(self, num_experts: int) -> None:
        """Any k: it scales the capacity, and each expert takes at most every token."""


@register_router("expert_choice")
class ExpertChoiceRouter(Router):
    """Expert choice (Zhou et al. 2022): each expert takes its top-C tokens, C = capacity_factor * N * k / E.

    S = softmax(x W_g) over experts; expert e keeps the C real tokens with the largest S[:, e] and weights them
    by S[t, e] (no renormalisation). A token may get 0..E experts; load is perfectly balanced by construction.
    The pool is every real token of the call (all sequences of the batch): routing a token looks at later
    tokens, so this router is not causal. No aux loss (the paper has none); optional ST-MoE z-loss.
    Under expert parallelism the pool is each rank's own tokens; with a global view (`ctx.gather`, see
    `smoe.expert_parallel`) it is every real token of every rank, exactly as one process holding the whole batch.
    """

    supports_global_view = True
    capacity_factor = StaticFloat()

    Options = ExpertChoiceOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    def capacity(self, num_tokens: int | Tensor) -> int | Tensor:
        """Tokens per expert: ceil(capacity_factor * N * k / E), at most N (an int, or a 0-dim long tensor for a
        0-dim long tensor N)."""
        real = num_tokens.double() if isinstance(num_tokens, Tensor) else num_tokens
        c = integral(self.capacity_factor * real * self.options.k / self.num_experts)
        return torch.minimum(c, num_tokens) if isinstance(c, Tensor) else min(num_tokens, c)

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with C pairs per expert (expert-major; with ctx.gather, this call's share of them).

        Candidates: the top C_max = capacity(pool rows) of every expert, of which the first capacity(real rows)
        are kept (all of them without padding); with ctx.gather, those of this call's rows are selected.
        """
        logits = gate_logits(x, self.gate.weight)
        probs = torch.softmax(logits, dim=-1)
        scores = probs if ctx.mask is None else probs.masked_fill(~ctx.mask[:, None], -1.0)
        pool, offset = (scores, 0) if ctx.gather is None else ctx.gather(scores.detach())
        e, c_max = self.num_experts, self.capacity(pool.shape[0])
        token = pool.t().topk(c_max, dim=1).indices.reshape(-1) - offset  # (E * C,) pool rows -> this call's rows
        expert = torch.arange(e, device=x.device).unsqueeze(1).expand(e, c_max).reshape(-1)
        keep = None
        if ctx.mask is not None or ctx.gather is not None:
            c = self.capacity((pool[:, 0] >= 0).sum())  # real rows hold probabilities >= 0, masked ones -1
            keep = (torch.arange(c_max, device=x.device) < c).repeat(e)
        if ctx.gather is not None:  # the pool spans several ranks (sizes already on the host): this call's rows
            keep &= (token >= 0) & (token < x.shape[0])
            token, expert, keep = token[keep], expert[keep], None
        aux = {"z_loss": self.options.z_loss_coef * z_loss(logits, ctx.mask)} if self.options.z_loss_coef > 0 else {}
        return Routing(token=token, expert=expert, weight=probs[token, expert], probs=probs, num_experts=e, aux=aux,
                       logits=logits, mask=ctx.mask, keep=keep)
