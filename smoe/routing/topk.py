"""Softmax top-k token-choice routing: Switch (k=1), GShard / Mixtral (k=2), Shazeer's noisy top-k gating.

References: Shazeer et al. 2017 (noisy top-k gating), Lepikhin et al. 2020 (GShard), Fedus et al. 2021 (Switch
Transformer load-balancing loss), Zoph et al. 2022 (ST-MoE router z-loss), Jiang et al. 2024 (Mixtral).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_choice, check_float, check_int
from smoe.init import ParamGenerators, global_rng
from smoe.routing.base import Router, RouterOptions, Routing, RoutingContext, auto_normalize, gate_logits, sample_noise
from smoe.routing.bias_balancing import BiasBalancing
from smoe.routing.losses import load_balance_loss, z_loss
from smoe.routing.registry import register_router


def top_k_probs(probs: Tensor, k: int, normalize: bool, select: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row of probs: (N, E) -> weight, index: (N, k); normalize rescales to sum 1.

    select: (N, E) scores that choose the k experts instead of probs (e.g. probs + an expert bias); the weights
    are still the chosen entries of probs (all 0, not NaN, when every chosen entry underflowed to 0).
    """
    index = (probs if select is None else select).topk(k, dim=-1).indices
    weight = probs.gather(1, index)
    if normalize:
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return weight, index


@dataclass
class SoftmaxTopKOptions(RouterOptions):
    """What softmax top-k routers share: k, renormalisation (None: True when k > 1) and the two aux losses
    (load_balance_counts: which choices f_e counts, see `SoftmaxTopKRouter`)."""

    k: int = 2
    normalize: bool | None = None
    load_balance_coef: float = 0.01
    load_balance_counts: str = "pairs"
    z_loss_coef: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        check_float("load_balance_coef", self.load_balance_coef, low=0.0)
        check_choice("load_balance_counts", self.load_balance_counts, ("pairs", "first"))
        check_float("z_loss_coef", self.z_loss_coef, low=0.0)
        auto_normalize(self.normalize, self.k)  # validates it

    @property
    def renormalize(self) -> bool:
        """`normalize` resolved: None (auto) means True when k > 1."""
        return auto_normalize(self.normalize, self.k)


@dataclass
class TopKOptions(SoftmaxTopKOptions):
    """Options of `topk` (see `TopKRouter`)."""

    softmax: str = "before"
    noise: str = "none"
    noise_std: float = 1.0
    bias_rate: float | None = None
    eval_k: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.eval_k is not None:
            check_int("eval_k", self.eval_k, low=1)
        check_choice("softmax", self.softmax, ("before", "after"))
        check_choice("noise", self.noise, ("none", "learned", "fixed"))
        check_float("noise_std", self.noise_std, low=0.0)

    def check_experts(self, num_experts: int) -> None:
        super().check_experts(num_experts)
        if self.eval_k is not None:
            check_int("eval_k", self.eval_k, high=num_experts)


class SoftmaxTopKRouter(Router):
    """The gate and the aux losses of softmax top-k routers (`topk`, and the graph-of-tokens routers):
    Switch load balancing E * sum_e f_e P_e (coefficient `load_balance_coef`) and ST-MoE z-loss (`z_loss_coef`);
    a coefficient of 0 disables the term. P_e is the mean router probability of expert e over the real tokens;
    f_e with load_balance_counts="pairs" (default) the fraction of all k pairs sent to e (1 under perfect balance
    for any k; HF's Mixtral loss is k times it), with "first" the fraction of tokens whose first choice is e
    (GShard, X-MoE: E^2 mean_e(me_e ce_e)). Both count the choices before capacity drops any."""

    Options = SoftmaxTopKOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    def losses(self, routing: Routing, logits: Tensor, ctx: RoutingContext, index: Tensor) -> dict[str, Tensor]:
        """The weighted aux losses of a routing whose per-token choices are index: (N, k), best first."""
        aux = {}
        if self.options.load_balance_coef > 0:
            if self.options.load_balance_counts == "pairs":
                counted, keep = routing.pairs.expert, routing.pairs.keep
            else:
                counted, keep = index[:, 0], ctx.mask
            aux["load_balance"] = (self.options.load_balance_coef
                                   * load_balance_loss(routing.probs, counted, ctx.mask, keep))
        if self.options.z_loss_coef > 0:
            aux["z_loss"] = self.options.z_loss_coef * z_loss(logits, ctx.mask)
        return aux


@register_router("topk")
class TopKRouter(BiasBalancing, SoftmaxTopKRouter):
    """Softmax top-k (Switch k=1, GShard/Mixtral k=2; Shazeer et al. 2017 noisy gating).

    logits = x W_g (+ noise in training); per token keep the k largest.
    softmax="before": weights are softmax over all E experts, then top-k (GShard, Mixtral, V-MoE).
    softmax="after": the k largest logits choose; with normalize the weights are a softmax over the k chosen
    logits only (Shazeer 2017), without it the chosen entries of the softmax over all E.
    normalize: rescale the kept weights to sum 1 (default: True when k > 1, False for k = 1 as in Switch);
    with softmax="before" and normalize=True this equals softmax="after". So with k = 1 and the default, both
    give the full-softmax probability of the chosen expert: a softmax over one logit is the constant 1 and would
    pass the gate no gradient through the weights (normalize=True gives that literal form, weight 1).
    noise="learned": Shazeer's noisy gating, std = softplus(x W_noise), training only;
    noise="fixed": Gaussian noise of std `noise_std` on the logits, training only.
    eval_k: experts per token in eval mode (None: k), e.g. train top-2 and infer top-1 without retraining.
    Aux losses: those of `SoftmaxTopKRouter`.
    bias_rate: opt in to aux-loss-free balancing (Wang et al. 2024, see `BiasBalancing`; None = off): a
    per-expert bias is added to the scores that top-k ranks (probabilities with softmax="before", logits with
    "after") and never to the weights.
    """

    Options = TopKOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.noise_gate = nn.Linear(d_model, num_experts, bias=False) if self.options.noise == "learned" else None
        self.init_bias_balancing(self.options.bias_rate)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generators: ParamGenerators = global_rng) -> None:
        """The learned noise gate starts at zero (`smoe.init`; the gate is nn.Linear's)."""
        if self.noise_gate is not None:
            nn.init.zeros_(self.noise_gate.weight)

    def noisy_logits(self, x: Tensor, logits: Tensor, ctx: RoutingContext) -> Tensor:
        """logits + noise during training (the clean logits in eval or with noise='none')."""
        if not self.training or self.options.noise == "none":
            return logits
        eps = sample_noise(logits, ctx.generator)
        if self.options.noise == "learned":
            return logits + eps * F.softplus(gate_logits(x, self.noise_gate.weight))
        return logits + eps * self.options.noise_std

    @property
    def active_k(self) -> int:
        """Experts per token in the current mode (eval_k in eval mode when set)."""
        return self.options.k if self.training or self.options.eval_k is None else self.options.eval_k

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with k pairs per real token (eval_k in eval mode when set)."""
        logits = gate_logits(x, self.gate.weight)
        scores = self.noisy_logits(x, logits, ctx)
        probs = torch.softmax(scores, dim=-1)
        if self.options.softmax == "before":
            weight, index = top_k_probs(probs, self.active_k, self.options.renormalize, select=self.biased(probs))
        else:
            index = self.biased(scores).topk(self.active_k, dim=-1).indices
            weight = (torch.softmax(scores.gather(1, index), dim=-1) if self.options.renormalize
                      else probs.gather(1, index))
        routing = Routing.from_token_choice(index, weight, probs, ctx, logits=logits)
        routing.aux.update(self.losses(routing, logits, ctx, index))
        return routing
