"""Keyed initialisation for paired comparisons: each parameter drawn from a generator seeded by (seed, its name).

Plain construction draws every parameter from the global generator in construction order, so two models that
differ by one router get different values for every parameter built after that router. `init_keyed(model, seed)`
draws each parameter again from its own generator, seeded by a stable hash of (seed, parameter name): two models
holding a parameter of the same name and shape start from the same values, whatever other parameters they have.

The distributions are the modules' own: torch's rules for Linear, Conv and Embedding (`TORCH_RULES`; LayerNorm is
constant), and for smoe modules their `reset_parameters(generators)`, which draws its parameter `name` (relative to
the module) from `generators(name)`. Construction calls it with `global_rng` (every draw from the global generator,
as before), so a model built without `init_keyed` is initialised as usual. Modules are visited children first, so a
parent's rule (the LM's N(0, 0.02) embeddings, a zero noise gate) wins over its child's default, as in construction.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

ParamGenerators = Callable[[str], "torch.Generator | None"]


def global_rng(name: str) -> None:
    """The ParamGenerators of plain construction: every parameter from the global generator (None)."""
    return None


def param_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name) by SHA-256: the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def _linear(module: nn.Module, generators: ParamGenerators) -> None:
    """torch's nn.Linear / nn.ConvNd rule: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generators("weight"))
    if module.bias is not None:
        fan_in = module.weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(module.bias, -bound, bound, generator=generators("bias"))


def _embedding(module: nn.Embedding, generators: ParamGenerators) -> None:
    """torch's nn.Embedding rule: N(0, 1), the padding row zero."""
    nn.init.normal_(module.weight, generator=generators("weight"))
    if module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


def _constant(module: nn.Module, generators: ParamGenerators) -> None:
    """Norms: ones and zeros, no random draw."""
    module.reset_parameters()


TORCH_RULES: dict[type, Callable[[nn.Module, ParamGenerators], None]] = {
    nn.Linear: _linear, nn.Conv1d: _linear, nn.Conv2d: _linear, nn.Conv3d: _linear, nn.Embedding: _embedding,
    nn.LayerNorm: _constant,
}


def _rule(module: nn.Module) -> Callable[[nn.Module, ParamGenerators], None] | None:
    for kind, rule in TORCH_RULES.items():
        if isinstance(module, kind):
            return rule
    reset = getattr(module, "reset_parameters", None)
    if reset is not None and "generators" in inspect.signature(reset).parameters:
        return lambda m, generators: m.reset_parameters(generators)
    return None


@torch.no_grad()
def init_keyed(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise `model` in place, parameter `name` drawn from a generator seeded by (seed, name); returns it.

    Every module with parameters of its own needs a rule (see the module docstring), else a TypeError names it.
    The global generator is not touched. Generators live on the device of the model's first parameter.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    for prefix, module in reversed(list(model.named_modules())):  # every descendant before its ancestors
        rule = _rule(module)
        if rule is None:
            if next(module.parameters(recurse=False), None) is not None:
                raise TypeError(f"init_keyed: module {prefix or '<root>'!r} ({type(module).__name__}) has parameters "
                                f"but no init rule; give it reset_parameters(self, generators) (see smoe.init)")
            continue
        base = f"{prefix}." if prefix else ""

        def generators(name: str, base: str = base) -> torch.Generator:
            return torch.Generator(device).manual_seed(param_seed(seed, base + name))

        rule(module, generators)
    return model
