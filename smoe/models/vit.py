"""V-MoE: a ViT whose MoE blocks sit in every other block or in the last n of them (Riquelme et al. 2021).

Legend: B batch, P patches, D patch dimension, d model width, C classes.

    patches (B, P, D) -> linear patch embedding, [CLS] token, learned positions -> non-causal blocks (MoE FFN
    at the configured positions, any router, any residual rule) -> LayerNorm -> [CLS] (or mean) -> head (B, C).

V-MoE's placement: "Every 2" = moe_every=2 (blocks 1, 3, 5, ...), "Last n" = moe_every=2, moe_last=n. The
CLS token is routed like any patch (as in V-MoE). Deviation: V-MoE routes groups of 8 images independently;
here one routing pool is the whole batch of one forward call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smoe._validate import check_choice, check_int
from smoe.blocks import run_blocks
from smoe.init import ParamGenerators, global_rng
from smoe.layer import MoE
from smoe.models.common import ModelOutput, StackConfig, build_blocks, init_embedding


@dataclass(kw_only=True)
class ViTConfig(StackConfig):
    """The ViT: patch_dim D and num_patches P of its input, num_classes, pool = "cls" or "mean"."""

    patch_dim: int
    num_patches: int
    num_classes: int
    pool: str = "cls"
    moe_every: int = 2

    def __post_init__(self):
        super().__post_init__()
        check_int("patch_dim", self.patch_dim, low=1)
        check_int("num_patches", self.num_patches, low=1)
        check_int("num_classes", self.num_classes, low=2)
        check_choice("pool", self.pool, ("cls", "mean"))


class ViT(nn.Module):
    """V-MoE. forward(patches: (B, P, D)) -> ModelOutput with logits (B, C)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.patch_emb = nn.Linear(config.patch_dim, config.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.pos_emb = nn.Parameter(torch.empty(1, config.num_patches + 1, config.d_model))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = build_blocks(config, causal=False)
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self, generators: ParamGenerators = global_rng) -> None:
        """[CLS] at zero, N(0, 0.02) positions (`smoe.init`)."""
        nn.init.zeros_(self.cls)
        init_embedding(self.pos_emb, generator=generators("pos_emb"))

    def moe_layers(self) -> list[MoE]:
        """The MoE modules, in the order of `ModelOutput.moe`."""
        return [block.ffn for block in self.blocks if block.is_moe]

    def forward(self, patches: Tensor, *, step: int | None = None,
                generator: torch.Generator | None = None) -> ModelOutput:
        """patches: (B, P, D) float -> logits (B, C)."""
        expected = (self.config.num_patches, self.config.patch_dim)
        if patches.dim() != 3 or tuple(patches.shape[1:]) != expected or not patches.is_floating_point():
            raise ValueError(f"patches must be a float (B, {expected[0]}, {expected[1]}) tensor, "
                             f"got {tuple(patches.shape)} {patches.dtype}")
        x = self.patch_emb(patches)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_emb
        x, outputs = run_blocks(self.blocks, self.drop(x), step=step, generator=generator)
        x = self.ln_f(x)
        pooled = x[:, 0] if self.config.pool == "cls" else x[:, 1:].mean(1)
        return ModelOutput(logits=self.head(pooled), moe=[o.moe for o in outputs if o.moe is not None])
