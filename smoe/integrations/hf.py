"""Hugging Face transformers integration: any smoe router inside a pretrained HF sparse-MoE model.

`swap_router(model, "usmoe", ...)` (`smoe.integrations.swap`; HF models land in `swap_hf_router`) replaces the gate of
every sparse-MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) with an smoe router, reusing the block's
pretrained gate weights where the router has a gate of the same shape, and keeps the block's experts (and
shared expert). The HF experts take a fixed number of choices per token, so a routing with a variable number of
experts per token (USMoE, expert choice) is passed as `(N, k_max)` with padding pairs of weight 0 (exact: a zero
weight adds nothing; the padding costs compute only).

Legend: B batch, T sequence length, N = B*T tokens, E experts, d hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from smoe._validate import check_choice
from smoe.routing import Router, Routing, RoutingContext, build_router, router_options

TINY_ARCHS = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe")  # the architectures of `tiny_hf_model`

__all__ = ["SUPPORTED_BLOCKS", "SmoeGate", "moe_blocks", "record_router_logits", "routing_to_topk",
           "swap_hf_router", "tiny_hf_model"]


@dataclass(frozen=True)
class BlockSpec:
    """How to read a HF sparse-MoE block's configuration."""

    num_experts_attr: str
    normalize_attr: str | None  # config flag for renormalising the kept weights; None: always renormalised


SUPPORTED_BLOCKS: dict[str, BlockSpec] = {
    "MixtralSparseMoeBlock": BlockSpec("num_local_experts", None),
    "Qwen2MoeSparseMoeBlock": BlockSpec("num_experts", "norm_topk_prob"),
    "Qwen3MoeSparseMoeBlock": BlockSpec("num_experts", "norm_topk_prob"),
    "OlmoeSparseMoeBlock": BlockSpec("num_experts", "norm_topk_prob"),
}


def moe_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The supported sparse-MoE blocks of a HF model, in module order."""
    return [(name, m) for name, m in model.named_modules() if type(m).__name__ in SUPPORTED_BLOCKS]


def routing_to_topk(routing: Routing) -> tuple[Tensor, Tensor]:
    """COO routing -> (weights (N, k_max), experts (N, k_max)) padded with expert 0 / weight 0.

    k_max is the largest number of experts any token got (at least 1). Pairs keep their order within a token.
    """
    n = routing.num_tokens
    counts = torch.bincount(routing.token, minlength=n)
    k_max = max(int(counts.max()) if n else 0, 1)
    order = torch.argsort(routing.token, stable=True)
    token = routing.token[order]
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(token.numel(), device=token.device) - start[token]
    weights = routing.weight.new_zeros(n, k_max)
    experts = torch.zeros(n, k_max, dtype=torch.long, device=token.device)
    weights[token, slot] = routing.weight[order]
    experts[token, slot] = routing.expert[order]
    return weights, experts


class SmoeGate(nn.Module):
    """Drop-in replacement of a HF top-k router module.

    forward(hidden: (N, d)) -> (router_logits (N, E), weights (N, k_max), experts (N, k_max)), the HF router
    contract. The batch shape, token mask and causal flag of the current call come from `call_context`,
    which `swap_router`'s hooks set for the duration of each model / block call.
    """

    def __init__(self, router: Router, causal: bool):
        super().__init__()
        self.router = router
        self.causal = causal
        self.call_context: dict = {}

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = hidden.reshape(-1, self.router.d_model)
        shape = self.call_context.get("batch_shape")
        mask = self.call_context.get("mask")
        ctx = RoutingContext(batch_shape=shape, mask=None if mask is None else mask.reshape(-1), causal=self.causal)
        routing = self.router(x, ctx)
        weights, experts = routing_to_topk(routing)
        logits = routing.logits if routing.logits is not None else routing.probs.clamp_min(1e-30).log()
        return logits.to(hidden.dtype), weights.to(hidden.dtype), experts


def swap_hf_router(model: nn.Module, router: str, reuse_gate: bool = True, use_mask: bool = True,
                   **options) -> list[tuple[str, bool]]:
    """Replace the gate of every supported sparse-MoE block of a HF `model` with smoe router `router`, in place;
    returns (block name, whether the pretrained gate weights were reused) per block (`swap_router` reports them).

    Defaults for `k` (the block's num_experts_per_tok) and, for routers with a `normalize` option, the block's
    renormalisation flag come from the model config; `options` override them. With use_mask, the
    `attention_mask` given to the model reaches the routers, so padding tokens are never routed.
    """
    blocks = moe_blocks(model)
    if not blocks:
        found = sorted({type(m).__name__ for m in model.modules() if "moe" in type(m).__name__.lower()})
        raise ValueError(f"no supported sparse-MoE block in {type(model).__name__} (found MoE-like modules: "
                         f"{found or 'none'}); supported blocks: {', '.join(SUPPORTED_BLOCKS)}")
    config = model.config
    causal = not getattr(config, "is_encoder_decoder", False)
    already_swapped = any(isinstance(block.gate, SmoeGate) for _, block in blocks)
    accepted = router_options(router)
    swapped = []
    for name, block in blocks:
        spec = SUPPORTED_BLOCKS[type(block).__name__]
        num_experts = getattr(config, spec.num_experts_attr)
        defaults = {"k": config.num_experts_per_tok}
        if "normalize" in accepted:
            defaults["normalize"] = True if spec.normalize_attr is None else bool(getattr(config, spec.normalize_attr))
        opts = {key: value for key, value in {**defaults, **options}.items() if key in accepted or key in options}
        new = build_router(router, d_model=config.hidden_size, num_experts=num_experts, **opts)
        old_weight = _gate_weight(block.gate)
        new = new.to(device=old_weight.device)
        reused = reuse_gate and new.load_gate(old_weight)
        block.gate = SmoeGate(new, causal).to(old_weight.device)
        if not already_swapped:
            block.register_forward_pre_hook(_set_batch_shape)
        swapped.append((name, reused))
    if not already_swapped:
        model.register_forward_pre_hook(partial(_set_mask, use_mask=use_mask), with_kwargs=True)
        model.register_forward_hook(_clear_context)
    return swapped


def _gate_weight(gate: nn.Module) -> Tensor:
    """The (E, d) gate weight of a HF router, or of the smoe router that replaced it."""
    if isinstance(gate, SmoeGate):
        inner = getattr(gate.router, "gate", None)
        if not isinstance(inner, nn.Linear):
            raise ValueError(f"this block's gate was swapped for {gate.router.router_name!r}, which has no linear "
                             "gate to carry over; swap the router of a fresh model instead")
        return inner.weight
    return gate.weight


def _gates(model: nn.Module) -> Iterator[SmoeGate]:
    return (m for m in model.modules() if isinstance(m, SmoeGate))


def _set_batch_shape(block: nn.Module, args: tuple) -> None:
    block.gate.call_context["batch_shape"] = tuple(args[0].shape[:-1])
    mask = block.gate.call_context.get("model_mask")
    if mask is not None:  # with a KV cache the mask covers past + current tokens: keep the current ones
        block.gate.call_context["mask"] = mask[:, -args[0].shape[1]:]


def _set_mask(model: nn.Module, args: tuple, kwargs: dict, use_mask: bool) -> None:
    mask = kwargs.get("attention_mask") if use_mask else None
    for gate in _gates(model):
        gate.call_context = {"model_mask": None if mask is None or mask.dim() != 2 else mask.bool()}


def _clear_context(model: nn.Module, args: tuple, output: object) -> None:
    for gate in _gates(model):
        gate.call_context = {}


@contextmanager
def record_router_logits(model: nn.Module) -> Iterator[list[Tensor]]:
    """Collect each sparse-MoE gate's router logits (N, E) during the calls made inside the block, in order.

    Works for original HF gates and for `SmoeGate`s alike (both return the logits first).
    """
    logits: list[Tensor] = []
    hooks = [block.gate.register_forward_hook(lambda m, a, out: logits.append(out[0].detach()))
             for _, block in moe_blocks(model)]
    try:
        yield logits
    finally:
        for h in hooks:
            h.remove()


def tiny_hf_model(arch: str, seed: int = 0, **overrides) -> nn.Module:
    """A small randomly initialised HF causal LM of a supported architecture, built offline from a config.

    arch: "mixtral" | "qwen2_moe" | "qwen3_moe" | "olmoe". For tests and the offline embedding suite.
    """
    check_choice("arch", arch, TINY_ARCHS)
    import transformers as tf

    common = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts_per_tok": 2,
              "max_position_embeddings": 256}
    builders: dict[str, Callable[[], tuple[type, dict]]] = {
        "mixtral": lambda: (tf.MixtralForCausalLM, {"config": tf.MixtralConfig, "num_local_experts": 8}),
        "qwen2_moe": lambda: (tf.Qwen2MoeForCausalLM, {"config": tf.Qwen2MoeConfig, "num_experts": 8,
                                                        "moe_intermediate_size": 48,
                                                        "shared_expert_intermediate_size": 96,
                                                        "norm_topk_prob": False}),
        "qwen3_moe": lambda: (tf.Qwen3MoeForCausalLM, {"config": tf.Qwen3MoeConfig, "num_experts": 8,
                                                        "moe_intermediate_size": 48, "norm_topk_prob": True,
                                                        "head_dim": 16}),
        "olmoe": lambda: (tf.OlmoeForCausalLM, {"config": tf.OlmoeConfig, "num_experts": 8,
                                                "norm_topk_prob": False}),
    }
    cls, kw = builders[arch]()
    config_cls = kw.pop("config")
    torch.manual_seed(seed)
    model = cls(config_cls(**{**common, **kw, **overrides}))
    return model.eval()
