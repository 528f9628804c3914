"""S2MoE: robust sparse mixture of experts via stochastic learning (Do, Le, Tran 2025, arXiv 2503.23007).

Legend: N tokens, B sequences of T tokens, d model width.

S2MoE changes the layer, not only the routing (two passes through the same experts, a gate mixing them, an
extra loss), so it is not a Router: `S2MoE` is a drop-in for `MoE` that owns one, registered as the layer-level
method "s2moe": a MoEConfig with method="s2moe" (its router the one it wraps, method_options `S2MoEOptions`)
selects it in `build_moe` and in every model config.

Reconstructed, not checked against the paper: there is no official code and the paper body was not readable;
the forward pass follows our method notes (batch2 section 3, consistent with an unofficial re-implementation)
and every uncertain choice is an option (see `S2MoE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from smoe._validate import check_bool, check_choice, check_float, check_int
from smoe.layer import MoE, MoEConfig, MoEOutput, MoEStats, as_config, aux_total, register_layer
from smoe.moe_config import MethodOptions
from smoe.routing.base import Router, Routing, RoutingContext, sample_noise
from smoe.routing.losses import info_nce


@dataclass
class S2MoEOptions(MethodOptions):
    """Options of `s2moe` (see `S2MoE`)."""

    eval_k: int | None = 1
    noise_scale: float = 1.0
    noise_stats: str = "tokens"
    detach_stats: bool = True
    route_noisy: str = "shared"
    infonce_coef: float = 0.1
    infonce_temperature: float = 0.1
    infonce_on: str = "inputs"
    infonce_tokens: int | None = 1024

    def __post_init__(self):
        if self.eval_k is not None:
            check_int("eval_k", self.eval_k, low=1)
        check_float("noise_scale", self.noise_scale, low=0.0)
        check_choice("noise_stats", self.noise_stats, ("tokens", "features"))
        check_bool("detach_stats", self.detach_stats)
        check_choice("route_noisy", self.route_noisy, ("shared", "own"))
        check_float("infonce_coef", self.infonce_coef, low=0.0)
        check_float("infonce_temperature", self.infonce_temperature, low=0.0, low_open=True)
        check_choice("infonce_on", self.infonce_on, ("inputs", "outputs"))
        if self.infonce_tokens is not None:
            check_int("infonce_tokens", self.infonce_tokens, low=2)

    def check_config(self, config: MoEConfig) -> None:
        if self.eval_k is None:
            return
        if not hasattr(config.router_options, "eval_k"):
            raise ValueError(f"method_options.eval_k={self.eval_k} needs a router with an eval_k option; router "
                             f"{config.router!r} has none (set eval_k=None)")
        if config.router_options.eval_k is not None:
            raise ValueError("eval_k is set twice: S2MoE's method_options.eval_k sets its router's; leave "
                             "router_options.eval_k None")
        check_int("method_options.eval_k", self.eval_k, high=config.num_experts)


@register_layer("s2moe")
class S2MoE(nn.Module):
    """S2MoE (Do, Le, Tran 2025): clean and Gaussian-noised inputs through the same experts, mixed by a gate.

    Training:  xhat = eps1 * x + eps2, eps1 ~ N(1, s^2), eps2 ~ N(mu, s^2) elementwise, s = noise_scale * sigma
               y = g * MoE(x) + (1 - g) * MoE(xhat),   g = sigmoid(x w + b): (N, 1), a one-layer gate
               aux = the base router's losses on the clean routing (Switch balance, 0.01)
                     + infonce_coef * InfoNCE(x, xhat) (the uncertainty loss, in-batch negatives, cosine / temperature)
    Eval:      y = MoE(x) with eval_k experts per token (default 1: top-1 inference); no noise, no gate.

    S2MoE(config) with config.method == "s2moe", or S2MoE(d_model, num_experts, hidden, **keywords) (as `MoE`,
    plus the options of `S2MoEOptions`). The inner layer is `MoE` of the same config without the method, its
    router's eval_k set to eval_k (the router must have that option unless eval_k is None).

    Options (defaults are our provisional choices; reconstructed, not checked against the paper):
    eval_k=1 (the paper's inference saving reads as top-1 inference against top-2 baselines; an unofficial
    re-implementation trains with k=1; the training k is the router's). noise_stats: mu, sigma per sequence and
    feature over the real tokens ("tokens", as that re-implementation runs; a sequence with < 2 real tokens uses
    the whole call's statistics) or per token over the features ("features"). detach_stats: mu, sigma carry no
    gradient. route_noisy: xhat reuses the clean routing ("shared", as that re-implementation) or is routed on its
    own ("own"). infonce_on: the InfoNCE pairs are the inputs (x_i, xhat_i) or the outputs of the two passes.
    infonce_temperature 0.1 (the authors' temperature in a sibling paper), infonce_coef 0.1;
    infonce_tokens: at most this many real tokens (drawn through the generator) enter the O(M^2) InfoNCE.
    """

    host_sync_in_training: ClassVar[str | None] = (
        "the InfoNCE loss takes the real tokens by index (mask.nonzero(): a data-dependent count)")

    Options = S2MoEOptions

    def __init__(self, config: MoEConfig | int | None = None, num_experts: int | None = None,
                 hidden: int | None = None, **keywords):
        super().__init__()
        config = as_config(config, num_experts, hidden, keywords, method="s2moe")
        if config.method != "s2moe":
            raise ValueError(f"S2MoE needs a config with method='s2moe', got method={config.method!r}")
        self.config = config
        self.options = opts = config.method_options
        router_options = (config.router_options if opts.eval_k is None
                          else replace(config.router_options, eval_k=opts.eval_k))
        self.moe = MoE(replace(config, method=None, method_options=None, router_options=router_options))
        self.gate = nn.Linear(config.d_model, 1)

    # the MoE interface, delegated to the inner layer
    @property
    def router(self) -> Router:
        return self.moe.router

    @property
    def dispatcher(self):
        return self.moe.dispatcher

    @property
    def experts(self):
        return self.moe.experts

    @property
    def d_model(self) -> int:
        return self.moe.d_model

    @property
    def num_experts(self) -> int:
        return self.moe.num_experts

    @property
    def routing_transform(self) -> Callable[[Routing], Routing] | None:
        """The inner MoE's: applied to both passes' routings before dispatch."""
        return self.moe.routing_transform

    @routing_transform.setter
    def routing_transform(self, transform: Callable[[Routing], Routing] | None) -> None:
        self.moe.routing_transform = transform

    @torch.no_grad()
    def after_step(self, stats: list[MoEStats] | None = None) -> None:
        self.moe.after_step(stats)

    def mix_gate(self, flat: Tensor) -> Tensor:
        """flat: (N, d) -> g: (N, 1), the weight of the clean path (log its mean: g -> 1 ignores the noisy path)."""
        return torch.sigmoid(self.gate(flat))

    def perturb(self, flat: Tensor, ctx: RoutingContext) -> Tensor:
        """flat: (N, d) -> xhat = eps1 * x + eps2: (N, d), eps1 ~ N(1, s^2), eps2 ~ N(mu, s^2)."""
        batch, length = ctx.sequences(flat.shape[0])
        z = flat.view(batch, length, flat.shape[-1])
        mu, sigma = self.noise_statistics(z, ctx)
        if self.options.detach_stats:
            mu, sigma = mu.detach(), sigma.detach()
        s = self.options.noise_scale * sigma
        eps1 = 1.0 + s * sample_noise(z, ctx.generator)
        eps2 = mu + s * sample_noise(z, ctx.generator)
        return (eps1 * z + eps2).reshape(flat.shape)

    def noise_statistics(self, z: Tensor, ctx: RoutingContext) -> tuple[Tensor, Tensor]:
        """z: (B, T, d) -> mu, sigma broadcastable to it (population std, real tokens only)."""
        if self.options.noise_stats == "features":
            return z.mean(-1, keepdim=True), _safe_sqrt(z.var(-1, correction=0, keepdim=True))
        real = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device) if ctx.mask is None else ctx.mask
        w = real.view(*z.shape[:2], 1).to(z.dtype)
        mu, var, count = _weighted_stats(z, w, (1,))
        mu_all, var_all, _ = _weighted_stats(z, w, (0, 1))
        few = count < 2
        return torch.where(few, mu_all, mu), _safe_sqrt(torch.where(few, var_all, var))

    def uncertainty_loss(self, anchor: Tensor, positive: Tensor, ctx: RoutingContext) -> Tensor:
        """InfoNCE over (a subsample of) the real tokens; anchor, positive: (N, d)."""
        n = anchor.shape[0]
        idx = torch.arange(n, device=anchor.device) if ctx.mask is None else ctx.mask.nonzero().squeeze(1)
        most = self.options.infonce_tokens
        if most is not None and idx.numel() > most:
            pick = torch.randperm(idx.numel(), generator=ctx.generator, device=idx.device)[:most]
            idx = idx[pick]
        return info_nce(anchor[idx], positive[idx], self.options.infonce_temperature)

    def forward(self, x: Tensor, mask: Tensor | None = None, **context) -> MoEOutput:
        """x: (..., d_model), mask: (...) bool, context: MoE.forward's keywords -> MoEOutput (clean routing)."""
        ctx = self.moe.routing_context(x, mask, **context)
        flat = x.reshape(-1, self.d_model)
        routing = self.moe.route(flat, ctx)
        y, plan = self.moe.run_experts(flat, routing)
        aux = dict(routing.aux)
        if self.training:
            noisy = self.perturb(flat, ctx)
            noisy_routing = routing if self.options.route_noisy == "shared" else self.moe.route(noisy, ctx)
            y_noisy, _ = self.moe.run_experts(noisy, noisy_routing)
            if self.options.infonce_coef > 0:
                pair = (flat, noisy) if self.options.infonce_on == "inputs" else (y, y_noisy)
                aux["uncertainty"] = self.options.infonce_coef * self.uncertainty_loss(*pair, ctx)
            g = self.mix_gate(flat).to(y.dtype)
            y = g * y + (1 - g) * y_noisy
        return MoEOutput(y=y.reshape(x.shape), aux_loss=aux_total(aux, x.device), routing=routing.replace(aux=aux),
                         stats=MoEStats.from_plan(plan))


def _weighted_stats(z: Tensor, w: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, population variance and count of z over dims, rows weighted by w in {0, 1}."""
    count = w.sum(dims, keepdim=True)
    mu = (z * w).sum(dims, keepdim=True) / count.clamp_min(1)
    var = ((z - mu) ** 2 * w).sum(dims, keepdim=True) / count.clamp_min(1)
    return mu, var, count


def _safe_sqrt(var: Tensor) -> Tensor:
    """sqrt with a finite gradient at 0."""
    return var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
