"""The MoE layer: Router -> Dispatcher -> Experts -> combine. An ordinary nn.Module, usable in any model.

Legend: N tokens after flattening the leading dims, E experts, d model width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from smoe.dispatch import Dispatcher, DispatchPlan
from smoe.experts import Experts
from smoe.moe_config import LAYERS, MoEConfig, available_layers, layer_options, option_values, register_layer
from smoe.routing import Routing, RoutingContext, build_router

__all__ = ["LAYERS", "MoE", "MoEConfig", "MoELayer", "MoEOutput", "MoEStats", "as_config", "available_layers",
           "build_moe", "layer_options", "layer_summary", "moe_layers", "register_layer"]


@dataclass
class MoEStats:
    """Routing statistics of one call (tensors, no host sync).

    counts: (E,) kept pairs per expert; routed: (E,) pairs per expert before capacity;
    dropped_fraction: 0-dim fraction of pairs dropped by capacity; capacity: C or None (dropless), an int or,
    when it depends on the data (a mask, routing groups), a 0-dim long tensor (`DispatchPlan.capacity`).
    """

    counts: Tensor
    routed: Tensor
    dropped_fraction: Tensor
    capacity: int | Tensor | None

    @property
    def load(self) -> Tensor:
        """(E,) fraction of the kept pairs each expert processed."""
        return self.counts.float() / self.counts.sum().clamp_min(1).float()

    @classmethod
    def from_plan(cls, plan: DispatchPlan) -> MoEStats:
        return cls(counts=plan.counts, routed=plan.routed, dropped_fraction=plan.dropped_fraction,
                   capacity=plan.capacity)


def aux_total(aux: dict[str, Tensor], device: torch.device) -> Tensor:
    """0-dim sum of named, already weighted aux losses (0 when there are none)."""
    return sum(aux.values(), torch.zeros((), device=device))


@dataclass
class MoEOutput:
    """y: same shape as the input; aux_loss: 0-dim sum of the router's weighted aux losses."""

    y: Tensor
    aux_loss: Tensor
    routing: Routing
    stats: MoEStats


@runtime_checkable
class MoELayer(Protocol):
    """What every MoE layer offers (`MoE`, `S2MoE`, `ExpertParallelMoE`, the SMoE-VAE's `DecoderMoE`), so that
    metrics, evaluation and the Trainer find and drive layers one way: forward(...) -> MoEOutput; `router` and
    `dispatcher`; `routing_transform` (None, or a map applied to the router's Routing before dispatch); and
    `after_step(stats)`, called once per optimizer step with the layer's MoEStats of every micro-batch."""

    router: nn.Module
    dispatcher: Dispatcher
    routing_transform: Callable[[Routing], Routing] | None

    def after_step(self, stats: list[MoEStats] | None = None) -> None: ...


def moe_layers(model: nn.Module) -> list[nn.Module]:
    """The MoE layers of `model`: `model.moe_layers()` when it defines it (the order of its outputs' `moe`), else
    `[model]` for a layer itself, else every outermost submodule meeting `MoELayer`."""
    if callable(getattr(model, "moe_layers", None)):
        return list(model.moe_layers())
    if isinstance(model, MoELayer):
        return [model]
    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, MoELayer) and not any(m in list(outer.modules()) for outer in found):
            found.append(m)
    return found


def as_config(config: MoEConfig | int | None, num_experts: int | None, hidden: int | None, keywords: dict,
              method: str | None = None) -> MoEConfig:
    """The config of a layer built as `Layer(config)` or `Layer(d_model, num_experts, hidden, **keywords)` (the
    keyword convenience, `MoEConfig.from_keywords`; d_model may be passed by name); method: the layer-level method
    the class implements."""
    if config is None:
        config = keywords.pop("d_model", None)
    if isinstance(config, MoEConfig):
        if num_experts is not None or hidden is not None or keywords:
            raise ValueError("pass a MoEConfig alone, or d_model, num_experts, hidden and keywords, not both")
    else:
        if num_experts is None or hidden is None:
            raise ValueError("a layer needs a MoEConfig, or d_model, num_experts and hidden")
        if method is not None and keywords.setdefault("method", method) != method:
            raise ValueError(f"method={keywords['method']!r}, but this layer is the method {method!r}")
        config = MoEConfig.from_keywords(config, num_experts, hidden, **keywords)
    if config.d_model is None or config.hidden is None:
        raise ValueError("a layer's MoEConfig needs d_model and hidden (a model's config leaves them to the model: "
                         "MoEConfig.sized)")
    return config


class MoE(nn.Module):
    """Sparse mixture-of-experts layer.

    MoE(config: MoEConfig), or the keyword convenience that builds the same config (`MoEConfig.from_keywords`):
    MoE(d_model, num_experts, hidden, router="topk", k=2, capacity_factor=None, expert="swiglu", **router_options)

    forward(x: (..., d_model), mask: (...) bool or None) -> MoEOutput. Masked tokens are never routed and get
    output 0. capacity_factor sets the dispatcher's per-expert capacity; a router that owns capacity (an option
    capacity_factor, e.g. expert_choice) takes it instead and dispatch stays dropless.
    Extra routing context (attention probabilities, token ids, the step, a generator) is passed as
    keyword arguments and reaches the router through `RoutingContext`.
    `routing_transform` (None by default) is applied to the router's Routing before dispatch; analyses use it
    to override routing (e.g. `smoe.workbench.measure.routing_metrics.routing_override`).
    num_shared_experts: always-active experts whose output is added to every real token's routed output
    (DeepSeekMoE / DeepSeek-V3), run as one expert of hidden num_shared_experts * hidden (the same function);
    shared_gate: scale that output by sigmoid(x w), w: (d,) (Qwen2-MoE's shared-expert gate).
    check_finite: raise a ValueError on NaN/Inf input. Off by default: the check reads the input on the host
    (a sync on a GPU, a graph break under torch.compile); the forward pass otherwise never waits for the device
    with the grouped backend.
    """

    def __init__(self, config: MoEConfig | int | None = None, num_experts: int | None = None,
                 hidden: int | None = None, **keywords):
        super().__init__()
        config = as_config(config, num_experts, hidden, keywords)
        if config.method is not None:
            raise ValueError(f"{config.method!r} is a layer-level method, not a router: build it with "
                             f"smoe.build_moe(...) (method={config.method!r})")
        self.config = config
        d, e, h = config.d_model, config.num_experts, config.hidden
        self.router = build_router(config.router, d_model=d, num_experts=e, **option_values(config.router_options))
        self.dispatcher = Dispatcher(e, config.capacity_factor, config.capacity_rounding, config.capacity_multiple)
        self.experts = Experts(e, d, h, kind=config.expert, bias=config.bias, backend=config.backend)
        self.routing_transform: Callable[[Routing], Routing] | None = None
        self.shared = (Experts(1, d, config.num_shared_experts * h, kind=config.expert, bias=config.bias,
                               backend=config.backend) if config.num_shared_experts else None)
        self.shared_gate = nn.Linear(d, 1, bias=False) if config.shared_gate else None

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        *,
        causal: bool = False,
        attn_probs: Tensor | None = None,
        token_ids: Tensor | None = None,
        step: int | None = None,
        generator: torch.Generator | None = None,
    ) -> MoEOutput:
        """x: (..., d_model), mask: (...) bool -> MoEOutput with y: (..., d_model)."""
        ctx = self.routing_context(x, mask, causal=causal, attn_probs=attn_probs, token_ids=token_ids, step=step,
                                   generator=generator)
        flat = x.reshape(-1, self.d_model)
        routing = self.route(flat, ctx)
        if self.routing_transform is not None:
            routing = self.routing_transform(routing)
        y, plan = self.run_experts(flat, routing)
        if self.shared is not None:
            y = y + self.shared_output(flat, ctx.mask)
        return MoEOutput(y=y.reshape(x.shape), aux_loss=aux_total(routing.aux, x.device), routing=routing,
                         stats=MoEStats.from_plan(plan))

    def routing_context(self, x: Tensor, mask: Tensor | None = None, *, causal: bool = False,
                        attn_probs: Tensor | None = None, token_ids: Tensor | None = None, step: int | None = None,
                        generator: torch.Generator | None = None) -> RoutingContext:
        """Validate x: (..., d_model) and mask: (...) and build the RoutingContext of one call."""
        lead = self._check_input(x, mask, token_ids)
        return RoutingContext(
            batch_shape=lead, mask=None if mask is None else mask.reshape(-1), causal=causal, attn_probs=attn_probs,
            token_ids=None if token_ids is None else token_ids.reshape(-1), step=step, generator=generator,
        )

    def run_experts(self, flat: Tensor, routing: Routing) -> tuple[Tensor, DispatchPlan]:
        """flat: (N, d) -> (N, d) sum over each token's kept pairs of weight * expert(token), and the plan."""
        plan = self.dispatcher.plan(routing)
        rows = self.expert_outputs(flat, plan)
        return self.dispatcher.combine(rows, plan, flat.shape[0]), plan

    def route(self, flat: Tensor, ctx: RoutingContext) -> Routing:
        """The router's decision for flat: (N, d). A hook: a subclass may change what the router sees."""
        return self.router(flat, ctx)

    def expert_outputs(self, flat: Tensor, plan: DispatchPlan) -> Tensor:
        """(A', d): every grouped row of plan through its expert. A hook: the expert-parallel layer overrides it."""
        return self.experts(self.dispatcher.dispatch(flat, plan), plan.counts)

    def shared_output(self, flat: Tensor, mask: Tensor | None) -> Tensor:
        """flat: (N, d) -> (N, d) output of the shared experts (gated when shared_gate), 0 on masked tokens."""
        out = self.shared(flat, torch.full((1,), flat.shape[0], device=flat.device))
        if self.shared_gate is not None:
            out = torch.sigmoid(self.shared_gate(flat)) * out
        return out if mask is None else out.masked_fill(~mask[:, None], 0.0)

    def _check_input(self, x: Tensor, mask: Tensor | None, token_ids: Tensor | None) -> tuple[int, ...]:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (..., d_model={self.d_model}), got {tuple(x.shape)}")
        lead = tuple(x.shape[:-1])
        for name, t in (("mask", mask), ("token_ids", token_ids)):
            if t is not None and tuple(t.shape) != lead:
                raise ValueError(f"{name} must have shape {lead} (x's leading dims), got {tuple(t.shape)}")
        if mask is not None and mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = real token), got {mask.dtype}")
        weight_dtype = self.experts.w_in.dtype
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"x has dtype {x.dtype} and the layer's weights {weight_dtype}: cast one to the other "
                             f"(x.to({weight_dtype}) or layer.to({x.dtype})), or run under torch.autocast")
        # opt in (a host read); one cheap reduction, the exact check only when the sum is not finite
        if self.config.check_finite and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or Inf; the MoE layer refuses non-finite input (check_finite=True)")
        return lead

    @torch.no_grad()
    def after_step(self, stats: list[MoEStats] | None = None) -> None:
        """Called by the Trainer once per optimizer step with this layer's stats of that step."""
        self.router.after_step(stats)


# ---------------------------------------------------------------- layer-level methods

def layer_summary(name: str) -> str:
    """First line of a layer-level method's docstring (its paper), for `smoe routers`."""
    return LAYERS.summary(name)


def build_moe(config: MoEConfig | int | None = None, num_experts: int | None = None, hidden: int | None = None,
              **keywords) -> nn.Module:
    """The layer of `config` (or of the keyword convenience, as `MoE` takes it): its layer-level method when
    `method` is set (`router=<a method's name>` selects it too, with the default router), else `MoE`."""
    config = as_config(config, num_experts, hidden, keywords)
    return (MoE if config.method is None else LAYERS.get(config.method))(config)
