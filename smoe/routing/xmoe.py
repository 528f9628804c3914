"""X-MoE routing (Chi et al., NeurIPS 2022, "On the Representation Collapse of Sparse Mixture of Experts").

Release: microsoft/torchscale `torchscale/component/xmoe/routing.py` (`Top2Gate`, `top2gating`, `Top1Gate`); the
paper's text beyond its abstract was not read. Both readings are offered (see the class docstring); the paper
reading is the default because it is the method the paper describes (scores on a hypersphere over a learnable
temperature) and the only one with the bounded, token-norm-invariant scores the paper motivates; the release
(`normalize_tokens=False, temperature=None`) is what the authors ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_bool, check_choice, check_float, check_int
from smoe.init import ParamGenerators, global_rng
from smoe.routing.base import Router, RouterOptions, Routing, RoutingContext, gate_logits, router_dtype, sample_noise
from smoe.routing.losses import load_balance_loss
from smoe.routing.registry import register_router

NORM_EPS = 1e-4  # the release's eps when L2-normalising expert embeddings (used for tokens too)


@dataclass
class XMoEOptions(RouterOptions):
    """Options of `xmoe` (see `XMoERouter`)."""

    k: int = 2
    dim: int = 16
    normalize_tokens: bool = True
    temperature: float | None = 0.07
    learn_temperature: bool = True
    min_temperature: float = 1e-4
    expert_norm: float | None = 1.5
    init_gain: float = 0.32
    second_expert: str = "random"
    eval_second_expert: str = "threshold"
    load_balance_coef: float = 0.01
    capacity: str = "layer"
    eval_capacity_fraction: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        check_int("dim", self.dim, low=1)
        check_bool("normalize_tokens", self.normalize_tokens)
        check_bool("learn_temperature", self.learn_temperature)
        if self.temperature is not None:
            check_float("temperature", self.temperature, low=0.0, low_open=True)
        check_float("min_temperature", self.min_temperature, low=0.0, low_open=True)
        if self.expert_norm is not None:
            check_float("expert_norm", self.expert_norm, low=0.0, low_open=True)
        check_float("init_gain", self.init_gain, low=0.0, low_open=True)
        check_choice("second_expert", self.second_expert, ("random", "all"))
        check_choice("eval_second_expert", self.eval_second_expert, ("random", "threshold", "all"))
        if self.k > 2 and "random" in (self.second_expert, self.eval_second_expert):
            raise ValueError(f"second_expert and eval_second_expert must be 'all' for k={self.k} > 2 "
                             "(the random second-expert policy is defined for top-2)")
        check_float("load_balance_coef", self.load_balance_coef, low=0.0)
        check_choice("capacity", self.capacity, ("layer", "release"))
        check_float("eval_capacity_fraction", self.eval_capacity_fraction, low=0.0, high=1.0)


@register_router("xmoe")
class XMoERouter(Router):
    """X-MoE (Chi et al. 2022): cosine routing scores in a low-dimensional space, over a learnable temperature.

    z = R x with R: (dim, d) linear, no bias (dim 16 in the release); expert embeddings M: (E, dim), orthogonal
    init with gain 0.32. Score s[t, e] = <z_t / |z_t|, m_e / |m_e|> / max(tau, min_temperature) (paper reading,
    default: both sides normalised, tau learnable from `temperature` = 0.07, floored at 1e-4; reconstructed, not
    checked against the paper), so |s| <= 1 / tau and s does not depend on |x|. The release: normalize_tokens=False,
    temperature=None (s = <z_t, m_e / |m_e|>, no temperature). G = softmax(s).
    k=1: weight G[e1]. k=2 (release default): e1, e2 the two largest G, weights G / (G[e1] + G[e2]) normalised
    before any drop; second_expert="random" keeps the second pair only with probability 2 g2 (u ~ U(0, 1) from
    ctx.generator, kept iff 2 g2 > u; the release does this in eval too: eval_second_expert="random");
    eval_second_expert="threshold" (default) keeps it iff 2 g2 > 1/2, "all" always; second_expert="all" is plain
    top-2. k>2 is plain top-k with renormalised weights (second_expert must be "all").
    Every row of M is rescaled to norm `expert_norm` (1.5) at construction and by `after_step` after every
    optimizer step -- the release does it in place at the start of every forward; the scores only see m_e / |m_e|,
    so forward outputs are the same, only the parameter the optimizer updates differs. None disables it.
    Aux loss: load_balance_coef * E * sum_e mean_t G[t, e] * (fraction of tokens whose first choice is e), counted
    before any drop (release weight 0.01).
    capacity="layer" (default): the MoE layer's capacity_factor (if any) applies to the pairs left after the
    random drop, C = ceil(capacity_factor * A / E) from those A pairs. capacity="release": the router itself keeps
    per expert at most C = k ceil(S / E) pairs in training (2 ceil(S/E) for top-2) and ceil(eval_capacity_fraction
    * S) in eval (0.25; 0: the training rule), S the tokens of the call (padding included, as the release counts
    them), C computed before the random drop; first choices in token order fill the slots before any second
    choice. Use it with a dropless layer (capacity_factor=None).
    """

    Options = XMoEOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.proj = nn.Linear(d_model, self.options.dim, bias=False)
        self.expert_emb = nn.Parameter(torch.empty(num_experts, self.options.dim))
        temperature = self.options.temperature  # the initial value; the module state tau is `self.temperature`
        if temperature is None:
            self.temperature = None
        elif self.options.learn_temperature:
            self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        else:
            self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generators: ParamGenerators = global_rng) -> None:
        """Expert embeddings orthogonal with gain init_gain, rescaled to expert_norm (`smoe.init`; the projection is
        nn.Linear's, the temperature its constant)."""
        nn.init.orthogonal_(self.expert_emb, gain=self.options.init_gain, generator=generators("expert_emb"))
        self.rescale_expert_embeddings()

    @torch.no_grad()
    def rescale_expert_embeddings(self) -> None:
        """Rescale every row of the expert embeddings to norm `expert_norm` (no-op when None)."""
        if self.options.expert_norm is not None:
            emb = self.expert_emb
            emb.mul_(self.options.expert_norm / emb.norm(dim=1, keepdim=True).clamp_min(NORM_EPS))

    @torch.no_grad()
    def after_step(self, routing_stats: list | None = None) -> None:
        self.rescale_expert_embeddings()

    def scores(self, x: Tensor) -> Tensor:
        """x: (N, d) -> routing scores s: (N, E) in float32 (float64 for float64 input)."""
        z = gate_logits(x, self.proj.weight)
        if self.options.normalize_tokens:
            z = F.normalize(z, dim=-1, eps=NORM_EPS)
        experts = F.normalize(self.expert_emb.to(router_dtype(x)), dim=-1, eps=NORM_EPS)
        s = z @ experts.T
        if self.temperature is None:
            return s
        return s / self.temperature.to(s.dtype).clamp_min(self.options.min_temperature)

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with k pairs per real token (the second one possibly dropped, see `second_expert`)."""
        logits = self.scores(x)
        probs = torch.softmax(logits, dim=-1)
        top, index = probs.topk(self.options.k, dim=-1)
        weight = top / top.sum(-1, keepdim=True) if self.options.k > 1 else top
        routing = Routing.from_token_choice(index, weight, probs, ctx, logits=logits)
        if self.options.load_balance_coef > 0:
            routing.aux["load_balance"] = (self.options.load_balance_coef
                                           * load_balance_loss(probs, index[:, 0], ctx.mask, ctx.mask))
        policy = self.options.second_expert if self.training else self.options.eval_second_expert
        if self.options.k == 2 and policy != "all":
            g2 = weight[:, 1].detach()
            threshold = 0.5 if policy == "threshold" else sample_noise(g2, ctx.generator, uniform=True)
            keep = torch.stack([torch.ones_like(g2, dtype=torch.bool), 2 * g2 > threshold], 1)  # (N, 2), token-major
            routing = routing.select(keep.reshape(-1))
        if self.options.capacity == "release":
            routing = routing.select(self.within_release_capacity(routing, x.shape[0]))
        return routing

    def release_capacity(self, num_tokens: int) -> int:
        """Per-expert capacity of the release for a call of S = num_tokens tokens (see capacity="release")."""
        if not self.training and self.options.eval_capacity_fraction > 0:
            return math.ceil(self.options.eval_capacity_fraction * num_tokens)
        return self.options.k * math.ceil(num_tokens / self.num_experts)

    def within_release_capacity(self, routing: Routing, num_tokens: int) -> Tensor:
        """(S,) bool over `routing.pairs`: the pairs the release keeps, filling each expert's `release_capacity`
        slots with first choices in token order, then second choices (candidates not kept take no slot)."""
        pairs = routing.pairs
        order = (torch.arange(pairs.expert.numel(), device=pairs.expert.device) if pairs.priority is None
                 else torch.argsort(pairs.priority, descending=True, stable=True))
        expert = pairs.expert[order]
        taken = torch.ones_like(expert) if pairs.keep is None else pairs.keep[order].long()
        one_hot = expert.new_zeros(expert.numel(), self.num_experts).scatter_(1, expert[:, None], taken[:, None])
        slot = (one_hot.cumsum(0) - 1).gather(1, expert[:, None]).squeeze(1)
        keep = torch.empty_like(expert, dtype=torch.bool)
        keep[order] = slot < self.release_capacity(num_tokens)
        return keep
