"""smoe: sparse mixture-of-experts layers, every router of the papers behind one interface."""

from smoe.dispatch import Dispatcher, DispatchPlan
from smoe.expert_parallel import ExpertParallelMoE, to_expert_parallel
from smoe.experts import Experts
from smoe.layer import MoE, MoEConfig, MoELayer, MoEOutput, MoEStats, available_layers, build_moe, moe_layers
from smoe.models import LM, LMConfig, ModelOutput, SMoEVAE, VAEConfig, ViT, ViTConfig
from smoe.routing import (
    Router,
    Routing,
    RoutingContext,
    available_routers,
    build_router,
    register_router,
    router_options,
)
from smoe.s2moe import S2MoE, S2MoEOptions  # registers the layer-level method "s2moe"

__version__ = "0.1.0"

_WORKBENCH = {"TrainConfig": "smoe.workbench.train.config", "Trainer": "smoe.workbench.train.trainer",
              "load_model": "smoe.workbench.run.runner"}


def __getattr__(name: str):
    """The workbench's public names (`smoe.Trainer`, `smoe.load_model`), imported on first use: the library never
    imports it."""
    if name in _WORKBENCH:
        import importlib

        return getattr(importlib.import_module(_WORKBENCH[name]), name)
    raise AttributeError(f"module 'smoe' has no attribute {name!r}")

__all__ = [
    "LM",
    "DispatchPlan",
    "Dispatcher",
    "ExpertParallelMoE",
    "Experts",
    "LMConfig",
    "MoE",
    "MoEConfig",
    "MoELayer",
    "MoEOutput",
    "MoEStats",
    "ModelOutput",
    "Router",
    "Routing",
    "RoutingContext",
    "S2MoE",
    "S2MoEOptions",
    "SMoEVAE",
    "TrainConfig",
    "Trainer",
    "VAEConfig",
    "ViT",
    "ViTConfig",
    "available_layers",
    "available_routers",
    "build_moe",
    "build_router",
    "load_model",
    "moe_layers",
    "register_router",
    "router_options",
    "to_expert_parallel",
]
