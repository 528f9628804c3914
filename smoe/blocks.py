"""Transformer blocks with an MoE (or dense) FFN and a pluggable residual rule across layers.

Legend: B batch, T sequence length, d model width, H heads.

A block computes  h = x + Attn(LN1(x));  f = FFN(LN2(h) + shift(state));  (x', state') = rule(h, f, state).
The plain rule returns h + f. Rules that carry optimizer-like state from layer to layer (MomentumSMoE and
friends, `smoe/residual.py`) get it passed explicitly through the stack by `run_blocks`; no module stores it
between calls. The FFN is `build_moe(...)` (an MoE, or a layer-level method such as S2MoE) or a dense MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_choice, check_float, check_int
from smoe.layer import MoEConfig, MoEOutput, build_moe
from smoe.residual import PlainResidual, ResidualRule, available_rules, build_rule, register_rule

__all__ = ["Attention", "Block", "BlockConfig", "BlockOutput", "DenseFFN", "PlainResidual", "ResidualRule",
           "available_rules", "build_rule", "register_rule", "run_blocks"]

# ---------------------------------------------------------------- attention

class Attention(nn.Module):
    """Multi-head self-attention. x: (B, T, d) -> (B, T, d), and (B, T, T) head-averaged probabilities when asked.

    The fused SDPA kernel is used unless the probabilities are needed (attention-aware routing, analysis).
    """

    def __init__(self, d_model: int, num_heads: int, causal: bool, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads, self.causal, self.dropout = num_heads, causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None, need_probs: bool = False) -> tuple[Tensor, Tensor | None]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        p_drop = self.dropout if self.training else 0.0
        if need_probs:
            allowed = self._allowed(mask, t, x.device, with_causal=True)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            out = F.dropout(probs, p_drop, self.training) @ v
            avg = probs.mean(1)
        else:
            allowed = self._allowed(mask, t, x.device, with_causal=mask is not None)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p_drop,
                                                 is_causal=self.causal and allowed is None)
            avg = None
        return self.proj(out.transpose(1, 2).reshape(b, t, d)), avg

    def _allowed(self, mask: Tensor | None, t: int, device: torch.device, with_causal: bool) -> Tensor | None:
        """(B or 1, 1, T, T) bool: which keys each query may attend to; None when all may."""
        causal = torch.ones(t, t, dtype=torch.bool, device=device).tril() if self.causal and with_causal else None
        if mask is None:
            return causal
        allowed = mask[:, None, None, :]
        if causal is not None:
            allowed = allowed & causal
        # a query with no allowed key (padding before any real token) attends to itself
        return allowed | torch.eye(t, dtype=torch.bool, device=device)


# ---------------------------------------------------------------- the block

class DenseFFN(nn.Module):
    """A SwiGLU / GELU / ReLU MLP with the same interface as MoE (returns an MoEOutput-like tuple)."""

    def __init__(self, d_model: int, hidden: int, kind: str = "swiglu"):
        super().__init__()
        check_choice("expert", kind, ("swiglu", "gelu", "relu"))
        self.kind = kind
        self.w_in = nn.Linear(d_model, 2 * hidden if kind == "swiglu" else hidden, bias=False)
        self.w_out = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.w_in(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h) if self.kind == "gelu" else F.relu(h)
        return self.w_out(h)


@dataclass
class BlockConfig:
    """One transformer block: an MoE FFN with the layer config `moe` (a MoEConfig, or a mapping of its fields;
    its widths are this block's d_model and ffn_hidden), or, with moe None, a dense FFN of kind `expert`.

    rule, rule_options: the residual rule (`smoe/residual.py`) built for this block, with d_model filled in.
    """

    d_model: int
    num_heads: int
    ffn_hidden: int
    causal: bool = True
    dropout: float = 0.0
    expert: str = "swiglu"
    moe: MoEConfig | None = None
    rule: str = "residual"
    rule_options: dict = field(default_factory=dict)

    def __post_init__(self):
        check_int("d_model", self.d_model, low=1)
        check_int("num_heads", self.num_heads, low=1)
        check_int("ffn_hidden", self.ffn_hidden, low=1)
        check_float("dropout", self.dropout, low=0.0, high=1.0)
        check_choice("rule", self.rule, tuple(available_rules()))
        if self.moe is not None:
            self.moe = MoEConfig.of(self.moe, "moe").sized(self.d_model, self.ffn_hidden)


@dataclass
class BlockOutput:
    x: Tensor
    state: dict
    moe: MoEOutput | None
    attn_probs: Tensor | None


class Block(nn.Module):
    """Pre-norm transformer block: attention, then an MoE or dense FFN, joined by a residual rule.

    rule: a ResidualRule instance overriding config.rule (one per block: official-form rules own LayerNorms).
    """

    def __init__(self, config: BlockConfig, rule: ResidualRule | None = None):
        super().__init__()
        self.config = config
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = Attention(config.d_model, config.num_heads, config.causal, config.dropout)
        self.ln2 = nn.LayerNorm(config.d_model)
        if config.moe is not None:
            self.ffn: nn.Module = build_moe(config.moe)
        else:
            self.ffn = DenseFFN(config.d_model, config.ffn_hidden, config.expert)
        self.rule = rule if rule is not None else build_rule(config.rule, d_model=config.d_model,
                                                             **config.rule_options)
        self.drop = nn.Dropout(config.dropout)

    @property
    def is_moe(self) -> bool:
        return not isinstance(self.ffn, DenseFFN)

    def forward(self, x: Tensor, state: dict, mask: Tensor | None = None, need_probs: bool = False,
                step: int | None = None, generator: torch.Generator | None = None,
                token_ids: Tensor | None = None) -> BlockOutput:
        """x: (B, T, d), mask: (B, T) bool -> BlockOutput (x: (B, T, d), state, MoEOutput or None, probs)."""
        want_probs = need_probs or (self.is_moe and self.ffn.router.needs_attn_probs)
        a, probs = self.attn(self.ln1(x), mask, need_probs=want_probs)
        h = x + self.drop(a)
        u = self.ln2(h) + self.rule.ffn_input_shift(state)
        if self.is_moe:
            moe_out = self.ffn(u, mask, causal=self.config.causal, attn_probs=probs, step=step, generator=generator,
                               token_ids=token_ids)
            f = moe_out.y
        else:
            moe_out, f = None, self.ffn(u)
        x_next, state = self.rule(h, self.drop(f), state, self.is_moe)
        return BlockOutput(x=x_next, state=state, moe=moe_out, attn_probs=probs)


def run_blocks(blocks: nn.ModuleList, x: Tensor, mask: Tensor | None = None, need_probs: bool = False,
               **kwargs) -> tuple[Tensor, list[BlockOutput]]:
    """Run a stack of blocks, threading the residual rules' state (fresh, empty, at every call)."""
    state: dict = {}
    outputs = []
    for block in blocks:
        out = block(x, state, mask, need_probs=need_probs, **kwargs)
        x, state = out.x, out.state
        outputs.append(out)
    return x, outputs
