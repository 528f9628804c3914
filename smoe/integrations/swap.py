"""Training-free routing changes: replace the router of every MoE layer of a trained model.

`swap_router(model, "usmoe", pool="sequence")` works on smoe models (every `MoE` layer) and on Hugging Face
sparse-MoE models (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE; see `smoe.integrations.hf`). The new router reuses
the trained gate weights where its parameters allow it (a linear `gate` of the same shape); the experts stay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from smoe.integrations.hf import swap_hf_router
from smoe.layer import MoE
from smoe.routing import build_router


@dataclass
class SwapReport:
    """What `swap_router` did: the layers swapped and which of them reused the trained gate weights."""

    router: str
    layers: list[str]
    reused_gate: list[str]


def swap_router(model: nn.Module, router: str, reuse_gate: bool = True, **options) -> SwapReport:
    """Replace the router of every MoE layer of `model` with `router`, in place.

    smoe models: each `MoE` layer gets `build_router(router, d_model, num_experts, k=<the layer's k>, **options)`
    (its config records the new router and its options). HF models: see `smoe.integrations.hf.swap_hf_router`.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]
    if not layers:
        swapped = swap_hf_router(model, router, reuse_gate=reuse_gate, **options)
        return SwapReport(router=router, layers=[name for name, _ in swapped],
                          reused_gate=[name for name, reused in swapped if reused])
    report = SwapReport(router=router, layers=[], reused_gate=[])
    for name, moe in layers:
        opts = {"k": moe.config.router_options.k, **options}
        old = moe.router
        new = build_router(router, d_model=moe.d_model, num_experts=moe.num_experts, **opts)
        new = new.to(device=next(old.parameters(), torch.empty(0)).device)
        old_gate = getattr(old, "gate", None)
        if reuse_gate and isinstance(old_gate, nn.Linear) and new.load_gate(old_gate.weight):
            report.reused_gate.append(name)
        moe.router = new.train(old.training)
        moe.config = replace(moe.config, router=router, router_options=replace(new.options))
        report.layers.append(name)
    return report
