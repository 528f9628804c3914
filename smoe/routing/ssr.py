"""Selective Sinkhorn Routing (Nguyen D.A., Ta H.B., Le D.N., Nguyen T.M., Tran T.; arXiv 2511.08972, 2025).

Only the abstract was read. What it fixes: routing as OT with balance constraints, gating scores taken from the
transport map, Sinkhorn applied selectively so training stays cheap, no auxiliary balancing loss. The rest
(Bernoulli(p) per training call, weights = plan renormalised over the chosen k, plain softmax top-k at inference,
the cost, eps and iteration count) is reconstructed, not checked against the paper, from two third-party digests,
one third-party implementation and the first author's earlier experiments (see docs/routers.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from smoe._validate import check_choice, check_float, check_int
from smoe.routing.base import Routing, RoutingContext
from smoe.routing.registry import register_router
from smoe.routing.sinkhorn import SinkhornRouter, TransportOptions


@dataclass
class SSROptions(TransportOptions):
    """Options of `ssr` (see `SSRRouter`)."""

    k: int = 2
    plan_grad: bool = True
    p: float = 0.01
    draw: str = "call"
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_float("p", self.p, low=0.0, high=1.0)
        check_choice("draw", self.draw, ("call", "step"))
        check_int("seed", self.seed, low=0)
        self.p = float(self.p)


@register_router("ssr")
class SelectiveSinkhornRouter(SinkhornRouter):
    """Selective Sinkhorn Routing (Nguyen et al. 2025): softmax top-k, replaced by the OT plan on a p-fraction of steps.

    Training: with probability `p` a routing call uses the Sinkhorn branch -- the balanced plan P of the call's
    real tokens (rows 1, columns N_real/E; see `sinkhorn`) chooses the top-k experts and its chosen entries,
    renormalised over the k when `normalize` (default k > 1), are the weights; gradients flow through the
    Sinkhorn iterations when `plan_grad` (default). Otherwise, and always in eval, plain softmax top-k with the
    same weight rule (identical to `topk` with softmax="before", no noise, no aux loss). No auxiliary loss.
    draw="call": one Bernoulli(p) per routing call from ctx.generator (the global RNG when None), so layers fire
    independently; draw="step": u = f(seed, ctx.step), so every SSR layer with the same seed fires on the same
    steps (needs ctx.step). p=0 and p=1 make no draw.
    Reconstructed, not checked against the paper: the Bernoulli(p) selection, its per-call granularity, the
    renormalised plan weights, gradient through the plan, cost = logits with eps = 1, the iteration cap and
    tolerance, softmax at inference.
    """

    Options = SSROptions
    weights = "plan"  # the transport plan's weights, and no Sinkhorn at inference
    sinkhorn_in_eval = False

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with k pairs per real token."""
        return self.route(x, ctx, use_plan=self.training and self.selects_sinkhorn(ctx))

    def selects_sinkhorn(self, ctx: RoutingContext) -> bool:
        """Whether this training call takes the Sinkhorn branch (one Bernoulli(p) draw)."""
        if self.options.p in (0.0, 1.0):
            return self.options.p == 1.0
        if self.options.draw == "step":
            if ctx.step is None:
                raise ValueError("ssr with draw='step' needs the training step: call the layer with step=...")
            return random.Random(f"{self.options.seed}:{ctx.step}").random() < self.options.p
        device = ctx.generator.device if ctx.generator is not None else "cpu"
        return float(torch.rand((), generator=ctx.generator, device=device)) < self.options.p
