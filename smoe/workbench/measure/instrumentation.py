"""Instrumentation: hooks that record or override the routing of a model's MoE layers (the analytics' inputs).

`record_routing` records every layer's router inputs and Routing; `routing_override` makes every layer apply a
transform before dispatch, which `top_expert_sensitivity` uses with `workbench.measure.routing_metrics.drop_top_expert`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from smoe.layer import moe_layers
from smoe.routing.base import Routing
from smoe.workbench.measure.routing_metrics import RoutingTransform, concat_routings, drop_top_expert


@contextmanager
def routing_override(model: nn.Module, transform: RoutingTransform | None) -> Iterator[None]:
    """Within the block, every MoE layer in `model` (or `model` itself) applies `transform` before dispatch."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError(f"model has no MoE layer: {type(model).__name__}")
    previous = [m.routing_transform for m in layers]
    for m in layers:
        m.routing_transform = transform
    try:
        yield
    finally:
        for m, p in zip(layers, previous):
            m.routing_transform = p


@dataclass
class Sensitivity:
    """clean and ablated task metric; change = ablated - clean."""

    clean: float
    ablated: float
    change: float


@torch.no_grad()
def top_expert_sensitivity(model: nn.Module, evaluate: Callable[[], float], renormalize: bool = True) -> Sensitivity:
    """Task metric with every token's top expert removed (remaining weights renormalised) against the clean one.

    model: the network (or one MoE layer, to ablate that layer only); evaluate: computes the task metric of
    `model` on a fixed evaluation set (called twice, clean then ablated; it must be deterministic).
    """
    clean = float(evaluate())
    with routing_override(model, lambda r: drop_top_expert(r, renormalize)):
        ablated = float(evaluate())
    return Sensitivity(clean=clean, ablated=ablated, change=ablated - clean)


# ---------------------------------------------------------------- recording


@dataclass
class LayerRecord:
    """What one MoE layer's router saw and decided over recorded calls: inputs (N, d) and Routing per call."""

    inputs: list[Tensor] = field(default_factory=list)
    routings: list[Routing] = field(default_factory=list)

    @property
    def input(self) -> Tensor:
        """(N, d) router inputs of all calls."""
        return torch.cat(self.inputs)

    @property
    def routing(self) -> Routing:
        """One Routing over all calls (`concat_routings`)."""
        return concat_routings(self.routings)


def _detached(routing: Routing) -> Routing:
    def d(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach()

    return routing.replace(weight=routing.weight.detach(), probs=routing.probs.detach(), logits=d(routing.logits),
                           priority=d(routing.priority), aux={k: v.detach() for k, v in routing.aux.items()})


def moe_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The MoE layers of `model` (`smoe.layer.moe_layers`: those of `model.moe_layers()` in its order when the
    model has that method) by module name."""
    names = {id(m): name for name, m in model.named_modules()}
    return {names[id(m)]: m for m in moe_layers(model)}


@contextmanager
def record_routing(model: nn.Module) -> Iterator[dict[str, LayerRecord]]:
    """Record, for every MoE layer of `model` (by module name, see `moe_modules`), the router's input x: (N, d)
    and its Routing.

    The Routing is the router's own output (before any `routing_transform`); tensors are detached.
    """
    layers = moe_modules(model)
    if not layers:
        raise ValueError(f"model has no MoE layer: {type(model).__name__}")
    records = {name: LayerRecord() for name in layers}

    def hook(name: str):
        def save(module: nn.Module, args: tuple, output: Routing) -> None:
            records[name].inputs.append(args[0].detach())
            records[name].routings.append(_detached(output))

        return save

    handles = [m.router.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


