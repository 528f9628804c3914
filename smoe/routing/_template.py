"""my_router: cosine top-k routing with a learnable temperature -- a template to turn into your own router.

Written by `smoe new-router my_router`; the walk-through is docs/writing-a-router.md. Check it, then compare it
with top-k on a task, paired by seed, with verdicts:

    smoe check-router --import my_router.py my_router
    smoe compare --import my_router.py --task lm-bbc --routers topk,my_router --seeds 6 --out runs/my_router

Legend: N tokens (the batch flattened), E experts, k experts per token, d model width, S candidate pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe.init import ParamGenerators, global_rng
from smoe.routing import Router, Routing, RoutingContext, register_router
from smoe.routing.base import RouterOptions, router_dtype
from smoe.routing.losses import load_balance_loss


# 1. Options: one dataclass, a subclass of RouterOptions (which holds k and checks k >= 1). Every option has a
#    default and is validated in __post_init__ with a ValueError that names it. `smoe routers my_router` lists
#    them; a comparison entry sets them as `my_router:temperature=0.05`, a run as
#    `--set model.moe.router_options.temperature=0.05`. Inside the router they are read from self.options
#    (self.options.k): the one place they live.
@dataclass
class MyRouterOptions(RouterOptions):
    """Options of `my_router`: k experts per token, the starting temperature, the load-balancing weight."""

    k: int = 2
    temperature: float = 0.1
    load_balance_coef: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        for name in ("temperature", "load_balance_coef"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.load_balance_coef < 0:
            raise ValueError(f"load_balance_coef must be >= 0, got {self.load_balance_coef}")


# 2. Register the class under the name you compare it by. The first line of its docstring is what
#    `smoe routers` prints beside the name (say which paper it follows).
@register_router("my_router")
class MyRouter(Router):
    """Cosine top-k with a learnable temperature (template): softmax(cos(x, e_j) / tau), top-k, renormalised.

    scores: (N, E) cosine similarities between each token and E learned expert embeddings, divided by a
    temperature tau = exp(log_tau) learned from `temperature`; the k most probable experts per token, their
    probabilities renormalised to sum 1. Aux loss: Switch load balancing (`load_balance_coef`, 0 turns it off).
    """

    Options = MyRouterOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)  # validates the options (k <= E too) into self.options
        self.expert_emb = nn.Parameter(torch.empty(num_experts, d_model))
        self.log_temperature = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    # 3. The init rule. A comparison initialises every parameter from a generator keyed by (seed, its name)
    #    (`smoe.init.init_keyed`), so that two routers' runs share the values of every parameter they share.
    #    nn.Linear, nn.Embedding and nn.LayerNorm children have rules already; parameters of your own module need
    #    reset_parameters(generators): draw parameter `name` with generator=generators(name) (or set a constant).
    #    Construction calls it with global_rng (torch's global generator), so plain use is unchanged.
    @torch.no_grad()
    def reset_parameters(self, generators: ParamGenerators = global_rng) -> None:
        """expert_emb ~ N(0, 1/d); log_temperature = log(temperature)."""
        nn.init.normal_(self.expert_emb, std=self.d_model ** -0.5, generator=generators("expert_emb"))
        self.log_temperature.fill_(math.log(self.options.temperature))

    # 4. forward(x: (N, d), ctx) -> Routing. Rules every router keeps (smoe check-router tests each one):
    #    - compute in float32 (float64 for float64 input): router_dtype(x), whatever the model's dtype;
    #    - tokens where ctx.mask is False are never routed and never enter a loss or a statistic;
    #    - no host reads (.item(), int(t), if t > 0:, boolean indexing, nonzero): fixed shapes only, so the layer
    #      never waits for the GPU and compiles with torch.compile(fullgraph=True);
    #    - randomness only from ctx.generator (smoe.routing.base.sample_noise), so runs repeat;
    #    - no state changes here: state that moves between steps is a buffer updated in after_step().
    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with k pairs per real token."""
        dtype = router_dtype(x)
        cosine = F.normalize(x.to(dtype), dim=-1) @ F.normalize(self.expert_emb.to(dtype), dim=-1).t()  # (N, E)
        logits = cosine / self.log_temperature.to(dtype).exp()
        probs = torch.softmax(logits, dim=-1)  # (N, E): what losses and routing statistics read
        weight, index = probs.topk(self.options.k, dim=-1)  # (N, k) each
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        # 5. The Routing: per-token choices become S = N k candidate pairs; the masked tokens' are not kept
        #    (Routing.from_token_choice reads ctx.mask). An expert-choice or global-budget router builds
        #    Routing(token, expert, weight, probs, E, keep=...) itself (see smoe/routing/base.py).
        routing = Routing.from_token_choice(index, weight, probs, ctx, logits=logits)
        # 6. Aux losses: a dict of named 0-dim tensors, already weighted; the trainer adds them to the loss and
        #    logs each as aux/<name>. smoe.routing.losses has the usual ones, masked.
        if self.options.load_balance_coef > 0:
            routing.aux["load_balance"] = self.options.load_balance_coef * load_balance_loss(
                probs, routing.pairs.expert, ctx.mask, routing.pairs.keep)
        return routing
