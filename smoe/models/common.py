"""What the transformer models share: the stack config, where the MoE blocks go, and the model output.

Every smoe model returns an output whose `moe` field is the list of per-layer `MoEOutput`s (routing with
probs/logits, stats with the per-expert load, named aux losses) in the order of `model.moe_layers()`. They are
never concatenated across layers (HF's `output_router_logits` concatenates, which costs memory at long context).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from smoe._validate import check_choice, check_float, check_int
from smoe.blocks import Block, BlockConfig, available_rules
from smoe.layer import MoEConfig, MoEOutput

MAX_LAYERS = 1024  # far deeper than any model smoe trains; a deeper config is refused before lists of its layers


def moe_positions(num_layers: int, every: int, last: int | None = None) -> list[int]:
    """Indices of the blocks whose FFN is an MoE.

    every=n: blocks n-1, 2n-1, ... (V-MoE's "Every n"; 1 = every block, 2 = every other block: 1, 3, 5, ...);
    last=m keeps only the last m of those (V-MoE's "Last m"); every=0: none (a dense model).
    """
    check_int("num_layers", num_layers, low=1, high=MAX_LAYERS)
    check_int("moe_every", every, low=0)
    if last is not None:
        check_int("moe_last", last, low=1)
    if every == 0:
        return []
    positions = list(range(every - 1, num_layers, every))
    return positions if last is None else positions[-last:]


def default_moe() -> MoEConfig:
    """The MoE layers of a model config that names none: 8 experts, the default router with its own options."""
    return MoEConfig(num_experts=8)


@dataclass(kw_only=True)
class StackConfig:
    """A stack of pre-norm transformer blocks with MoE FFNs at chosen positions, any router and residual rule.

    moe: the config of every MoE layer (`smoe.MoEConfig`, or a mapping of its fields), without widths: the
    experts' are d_model and ffn_hidden. ffn_hidden is also the hidden width of the dense FFNs of non-MoE blocks,
    whose kind is moe.expert. `rule` and `rule_options` select the residual rule of `smoe/residual.py` by name
    (built by each block, one per block).
    """

    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    ffn_hidden: int = 256
    dropout: float = 0.0
    moe: MoEConfig = field(default_factory=default_moe)
    moe_every: int = 1
    moe_last: int | None = None
    rule: str = "residual"
    rule_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("d_model", "num_layers", "num_heads", "ffn_hidden"):
            check_int(name, getattr(self, name), low=1)
        check_float("dropout", self.dropout, low=0.0, high=1.0)
        self.moe = MoEConfig.of(self.moe, "moe")
        self.moe.sized(self.d_model, self.ffn_hidden)  # widths unset, or the model's
        check_choice("rule", self.rule, tuple(available_rules()))
        if not isinstance(self.rule_options, dict):
            raise ValueError(f"rule_options must be a dict of keyword arguments, got {self.rule_options!r}")
        moe_positions(self.num_layers, self.moe_every, self.moe_last)

    def to_dict(self) -> dict:
        return asdict(self)


def build_blocks(config: StackConfig, causal: bool) -> nn.ModuleList:
    """The blocks of `config`: an MoE FFN at `moe_positions`, a dense FFN elsewhere, one residual rule each."""
    positions = set(moe_positions(config.num_layers, config.moe_every, config.moe_last))
    return nn.ModuleList(
        Block(BlockConfig(d_model=config.d_model, num_heads=config.num_heads, ffn_hidden=config.ffn_hidden,
                          causal=causal, dropout=config.dropout, expert=config.moe.expert,
                          moe=config.moe if i in positions else None,
                          rule=config.rule, rule_options=dict(config.rule_options)))
        for i in range(config.num_layers)
    )


@dataclass
class ModelOutput:
    """logits: the task output; moe: one MoEOutput per MoE layer, in the order of `model.moe_layers()`."""

    logits: Tensor
    moe: list[MoEOutput]


def aux_losses(moe: list[MoEOutput]) -> dict[str, Tensor]:
    """Each named aux loss summed over the layers (every name any layer returned)."""
    total: dict[str, Tensor] = {}
    for out in moe:
        for name, value in out.routing.aux.items():
            total[name] = total[name] + value if name in total else value
    return total


def init_embedding(embedding: nn.Embedding | nn.Parameter, std: float = 0.02,
                   generator: torch.Generator | None = None) -> None:
    """GPT-2 style N(0, std) initialisation of token / position embeddings (generator None: the global one)."""
    weight = embedding.weight if isinstance(embedding, nn.Embedding) else embedding
    with torch.no_grad():
        nn.init.normal_(weight, mean=0.0, std=std, generator=generator)
