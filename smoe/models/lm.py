"""Decoder-only MoE language model (nanoGPT layout), with a classification-head variant.

Legend: B batch, T sequence length, V vocabulary, d model width, C classes.

    idx (B, T) -> token + position embedding -> blocks (MoE FFN at the configured positions, any router,
    any residual rule) -> final LayerNorm -> LM head (B, T, V), tied to the token embedding by default
    or, with num_classes set, the mean over real tokens -> linear head (B, C).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smoe._validate import check_int
from smoe.blocks import run_blocks
from smoe.init import ParamGenerators, global_rng
from smoe.layer import MoE, MoEConfig
from smoe.models.common import ModelOutput, StackConfig, build_blocks, init_embedding
from smoe.routing import available_routers, router_options


@dataclass(kw_only=True)
class LMConfig(StackConfig):
    """The LM: vocab_size and max_len (longest sequence), causal attention (False gives an encoder for
    classification), num_classes=None for next-token logits or C for a topic-classification head. A router with a
    `vocab_size` option (routing by token id: hash) gets the LM's where moe leaves it unset."""

    vocab_size: int
    max_len: int = 256
    causal: bool = True
    num_classes: int | None = None
    tie_embeddings: bool = True

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, low=1)
        self.moe = with_vocab_size(self.moe, self.vocab_size)
        super().__post_init__()
        check_int("max_len", self.max_len, low=1)
        if self.num_classes is not None:
            check_int("num_classes", self.num_classes, low=2)
        if not isinstance(self.causal, bool) or not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"causal and tie_embeddings must be bools, got {self.causal!r}, {self.tie_embeddings!r}")


def with_vocab_size(moe: object, vocab_size: int) -> object:
    """moe (a MoEConfig or a mapping of its fields) whose router, if it has a `vocab_size` option left unset,
    routes over `vocab_size` token ids."""
    if not isinstance(moe, Mapping) or not isinstance(moe.get("router_options") or {}, Mapping):
        return moe  # a MoEConfig is complete; a bad mapping fails in MoEConfig
    router = moe.get("router", MoEConfig.__dataclass_fields__["router"].default)
    options = moe.get("router_options") or {}
    if router in available_routers() and "vocab_size" in router_options(router) and options.get("vocab_size") is None:
        return {**moe, "router_options": {**options, "vocab_size": vocab_size}}
    return moe


class LM(nn.Module):
    """MoE transformer LM. forward(idx: (B, T) long, mask: (B, T) bool or None) -> ModelOutput."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = build_blocks(config, causal=config.causal)
        self.ln_f = nn.LayerNorm(config.d_model)
        if config.num_classes is None:
            self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
            if config.tie_embeddings:
                self.head.weight = self.tok_emb.weight
        else:
            self.head = nn.Linear(config.d_model, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self, generators: ParamGenerators = global_rng) -> None:
        """N(0, 0.02) token and position embeddings (GPT-2; the tied head shares the token embedding); `smoe.init`."""
        init_embedding(self.tok_emb, generator=generators("tok_emb.weight"))
        init_embedding(self.pos_emb, generator=generators("pos_emb.weight"))

    def moe_layers(self) -> list[MoE]:
        """The MoE modules, in the order of `ModelOutput.moe`."""
        return [block.ffn for block in self.blocks if block.is_moe]

    def forward(self, idx: Tensor, mask: Tensor | None = None, *, step: int | None = None,
                generator: torch.Generator | None = None) -> ModelOutput:
        """idx: (B, T) long, mask: (B, T) bool (True = real token) -> logits (B, T, V) or (B, C)."""
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (B, T) long tensor, got {tuple(idx.shape)} {idx.dtype}")
        t = idx.shape[1]
        if idx.numel():
            low, high = (int(v) for v in idx.aminmax())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"token ids must lie in [0, vocab_size={self.config.vocab_size}), got ids from {low} "
                                 f"to {high}")
        if t > self.config.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len={self.config.max_len}")
        if mask is not None and (mask.shape != idx.shape or mask.dtype != torch.bool):
            raise ValueError(f"mask must be a (B, T) bool tensor like idx {tuple(idx.shape)}, "
                             f"got {tuple(mask.shape)} {mask.dtype}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        x, outputs = run_blocks(self.blocks, x, mask, step=step, generator=generator, token_ids=idx)
        x = self.ln_f(x)
        moe = [o.moe for o in outputs if o.moe is not None]
        if self.config.num_classes is None:
            return ModelOutput(logits=self.head(x), moe=moe)
        if mask is None:
            pooled = x.mean(1)
        else:
            m = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1)
        return ModelOutput(logits=self.head(pooled), moe=moe)
