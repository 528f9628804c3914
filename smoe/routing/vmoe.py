"""V-MoE routing (Riquelme et al. 2021, "Scaling Vision with Sparse Mixture of Experts"), as released in
google-research/vmoe (`vmoe/nn/routing.py: NoisyTopExpertsPerItemRouter`, `vmoe/moe.py`).

Capacity is the dispatcher's: `MoE(..., router="vmoe", capacity_factor=C, capacity_rounding="ceil",
capacity_multiple=4)` reproduces the release (B = ceil(k S C / E) rounded up to a multiple of 4),
`capacity_rounding="round", capacity_multiple=1` the paper's round(k S C / E) (reconstructed, not checked against
the paper). BPR order and capacity rounding follow the method notes' reading of `vmoe/moe.py`; the router,
noise and losses were checked in `vmoe/nn/routing.py`. The test-time compute trade-off
is an eval-time change of `moe.dispatcher.capacity_factor` (and `moe.router.batch_priority`) on trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smoe._validate import check_choice, check_float, check_int
from smoe.routing.base import Router, RouterOptions, Routing, RoutingContext, gate_logits, sample_noise
from smoe.routing.losses import importance_loss, noisy_load_loss
from smoe.routing.registry import register_router


@dataclass
class VMoEOptions(RouterOptions):
    """Options of `vmoe` (see `VMoERouter`)."""

    k: int = 2
    noise_std: float = 1.0
    batch_priority: str = "eval"
    group_size: int | None = None
    importance_coef: float = 0.005
    load_coef: float = 0.005

    def __post_init__(self):
        super().__post_init__()
        check_float("noise_std", self.noise_std, low=0.0)
        check_choice("batch_priority", self.batch_priority, ("eval", "always", "never"))
        if self.group_size is not None:
            check_int("group_size", self.group_size, low=1)
        check_float("importance_coef", self.importance_coef, low=0.0)
        check_float("load_coef", self.load_coef, low=0.0)


@register_router("vmoe")
class VMoERouter(Router):
    """V-MoE (Riquelme et al. 2021): noisy softmax top-k, importance and load losses, Batch Prioritized Routing.

    logits H = x W (no bias); training adds Gaussian noise of std sigma = noise_std / E (fresh per token and
    expert, from ctx.generator); the dispatch probabilities Q = softmax(noisy H) over all E experts (clean H in
    eval); each token keeps its k largest Q as its experts and combine weights, not renormalised (also not when
    capacity later drops some of them). Under capacity every first choice outranks every second choice, etc.;
    within a rank, batch_priority decides: vanilla keeps earlier tokens, BPR keeps tokens with larger top-1 Q
    (ties: earlier first). batch_priority="eval" (default, as in the paper configs) uses BPR in eval only,
    "always" in training too, "never" not at all.
    group_size: tokens per routing group (V-MoE: 8 images x tokens per image); token t of the flattened call is
    in group t // group_size, and capacity, priority and both losses are per group (losses averaged over groups).
    None: the whole call is one group.
    Aux losses (per group, real tokens only): importance_coef * CV^2_e(sum_t softmax(H)[t, e]) on the clean
    probabilities, and in training with noise load_coef * CV^2_e(mean_t Phi((H[t, e] - eta_t) / sigma)), eta_t
    the k-th largest noisy logit of token t; CV^2 with the population std. Weights 0.005 each as in the
    released paper configs (the paper's lambda (L_imp + L_load) / 2 with lambda = 0.01 is reconstructed, not
    checked against the paper). The gate keeps PyTorch's default Linear init (flax: LeCun normal).
    """

    Options = VMoEOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    @property
    def sigma(self) -> float:
        """The std of the logit noise actually used: noise_std / E."""
        return self.options.noise_std / self.num_experts

    def uses_bpr(self) -> bool:
        return self.options.batch_priority == "always" or (self.options.batch_priority == "eval" and not self.training)

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with k pairs per real token."""
        logits = gate_logits(x, self.gate.weight)
        noisy = self.training and self.sigma > 0
        scores = logits + self.sigma * sample_noise(logits, ctx.generator) if noisy else logits
        probs = torch.softmax(scores, dim=-1)
        weight, index = probs.topk(self.options.k, dim=-1)
        priority = self.bpr_priority(weight) if self.uses_bpr() else None
        routing = Routing.from_token_choice(index, weight, probs, ctx, logits=logits, priority=priority)
        token_group = self.token_groups(x.shape[0], x.device)
        if token_group is not None:
            routing.pairs.group = token_group[routing.pairs.token]
        clean = torch.softmax(logits, dim=-1) if noisy else probs
        if self.options.importance_coef > 0:
            routing.aux["importance"] = self.options.importance_coef * importance_loss(clean, ctx.mask, token_group)
        if noisy and self.options.load_coef > 0:
            routing.aux["load"] = self.options.load_coef * noisy_load_loss(logits, scores, self.sigma, self.options.k,
                                                                           ctx.mask, token_group)
        return routing

    @staticmethod
    def bpr_priority(top_weight: Tensor) -> Tensor:
        """(N, k) priorities: rank r first (all r before r + 1), then the token's top-1 weight; float64."""
        top1 = top_weight[:, :1].detach().to(torch.float64)
        rank = torch.arange(top_weight.shape[1], device=top_weight.device, dtype=torch.float64)
        return top1 - 2.0 * rank  # top1 in (0, 1], so rank r lies in (-2r, 1 - 2r]: ranks never interleave

    def token_groups(self, num_tokens: int, device: torch.device) -> Tensor | None:
        """(N,) long routing group of each token, or None for one group."""
        if self.options.group_size is None:
            return None
        return torch.arange(num_tokens, device=device) // self.options.group_size
