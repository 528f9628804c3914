"""What every router consumes and produces: `RoutingContext` in, `Routing` out.

Legend: N tokens (flattened), E experts, k choices per token, A kept (token, expert) pairs, d model width.

A `Routing` is a sparse (N, E) matrix in COO form, so token choice (k per token), expert choice (C per expert)
and global-budget routers (0..E experts per token) share one representation and one dispatch path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor, nn

from smoe._validate import check_int


@dataclass
class RoutingContext:
    """What some routers need and others ignore.

    batch_shape: leading shape of the layer input before flattening, e.g. (B, T); N = prod(batch_shape).
    mask: (N,) bool, True for real tokens; masked tokens are never routed and never enter a loss or statistic.
    causal: the model is autoregressive; routers that pool over tokens must not look ahead.
    attn_probs: (B, T, T) head-averaged attention probabilities of the preceding attention layer.
    token_ids: (N,) long input ids (hash routing).
    step: training step, for schedules.
    generator: the source of every random draw a router makes (noise, sampling).
    gather: set only by an expert-parallel layer with a global view: gather(t) all-gathers the rows of t: (N, ...)
        from every rank of the group, in rank order and without gradient, and returns (N_all, ...) with the
        offset of this rank's rows in it. None: the call's own tokens are the whole pool.
    """

    batch_shape: tuple[int, ...] | None = None
    mask: Tensor | None = None
    causal: bool = False
    attn_probs: Tensor | None = None
    token_ids: Tensor | None = None
    step: int | None = None
    generator: torch.Generator | None = None
    gather: Callable[[Tensor], tuple[Tensor, int]] | None = None

    def sequences(self, num_tokens: int) -> tuple[int, int]:
        """(B, T): the N flattened tokens as B sequences of T tokens, T = the last axis of batch_shape.

        Without a batch_shape (or with a 0-dim one) all N tokens form one sequence.
        """
        if not self.batch_shape:
            return 1, num_tokens
        b, t = math.prod(self.batch_shape[:-1]), self.batch_shape[-1]
        if b * t != num_tokens:
            raise ValueError(f"batch_shape {tuple(self.batch_shape)} does not hold {num_tokens} tokens")
        return b, t


PAIR_FIELDS = ("token", "expert", "weight", "priority", "group")


@dataclass
class Pairs:
    """Candidate (token, expert) pairs in a shape that follows from the input's shape alone.

    token, expert: (S,) long; weight: (S,) float; priority: (S,) float or None; group: (S,) long or None (see
    `Routing`); keep: (S,) bool or None -- which candidates are pairs (None: all of them). A candidate that is
    not kept (a masked token's, one beyond a budget or a capacity, a dropped second choice) is never dispatched.
    """

    token: Tensor
    expert: Tensor
    weight: Tensor
    priority: Tensor | None = None
    group: Tensor | None = None
    keep: Tensor | None = None

    def kept(self, name: str) -> Tensor | None:
        """The field `name` at the kept candidates only: (A,). With `keep` set its size depends on the data (a host
        sync on a GPU), so the hot path (dispatcher, losses) reads the (S,) fields and `keep` instead."""
        value = getattr(self, name)
        return value if value is None or self.keep is None else value[self.keep]


class Routing:
    """The kept (token, expert) pairs of one routing call and what the router scored them with.

    token: (A,) long, expert: (A,) long, weight: (A,) float -- the pairs and their combine weights.
    probs: (N, E) float32 -- the distribution the router scored with (for losses and metrics).
    num_experts: E.
    aux: named, already weighted losses (each a scalar tensor).
    priority: (A,) float or None -- higher survives first when capacity drops pairs; None means pair order.
    logits: (N, E) raw router logits, where the router has them.
    mask: (N,) bool or None -- which tokens are real (copied from the context).
    group: (A,) long or None -- routing group of each pair; under capacity every (group, expert) gets its own
        capacity, computed from the group's pairs (V-MoE routes groups of images independently). None: one pool.
    keep: (S,) bool or None -- when given, token ... group are S candidates and only those where keep is True
        are pairs (A = keep.sum()).

    Routers build the pairs in fixed shapes (`pairs`: S candidates and `keep`, e.g. S = N k for token choice, a
    masked token's k candidates not kept), so a forward pass has no op whose output size depends on the data.
    The attributes token, expert, weight, priority and group hold the A kept pairs only (reading them with a
    `keep` is such an op; the dispatcher and the losses read `pairs`).
    """

    def __init__(self, token: Tensor, expert: Tensor, weight: Tensor, probs: Tensor, num_experts: int,
                 aux: dict[str, Tensor] | None = None, priority: Tensor | None = None, logits: Tensor | None = None,
                 mask: Tensor | None = None, group: Tensor | None = None, keep: Tensor | None = None):
        self.pairs = Pairs(token, expert, weight, priority, group, keep)
        self.probs, self.num_experts, self.logits, self.mask = probs, num_experts, logits, mask
        self.aux = {} if aux is None else aux

    token = property(lambda self: self.pairs.kept("token"), doc="(A,) long: the token of each kept pair.")
    expert = property(lambda self: self.pairs.kept("expert"), doc="(A,) long: the expert of each kept pair.")
    weight = property(lambda self: self.pairs.kept("weight"), doc="(A,): the combine weight of each kept pair.")
    priority = property(lambda self: self.pairs.kept("priority"), doc="(A,) or None: capacity priorities.")
    group = property(lambda self: self.pairs.kept("group"), doc="(A,) long or None: routing groups.")

    @property
    def num_tokens(self) -> int:
        return self.probs.shape[0]

    @property
    def num_pairs(self) -> int:
        """A (a host read when the pairs have a `keep`)."""
        keep = self.pairs.keep
        return self.pairs.token.numel() if keep is None else int(keep.sum())

    def replace(self, **changes) -> Routing:
        """A copy with some fields changed (keep included). Changing a per-pair field (token ... group) gives (A,)
        pairs, so the copy is built from the kept pairs; otherwise it shares these candidates."""
        pairs = ({n: getattr(self, n) for n in PAIR_FIELDS} if changes.keys() & set(PAIR_FIELDS)
                 else vars(self.pairs))
        shared = {"probs": self.probs, "num_experts": self.num_experts, "aux": self.aux, "logits": self.logits,
                  "mask": self.mask}
        return Routing(**{**shared, **pairs, **changes})

    def select(self, keep: Tensor) -> Routing:
        """The same routing with only the pairs where keep: (S,) bool, over `pairs`, is True (fixed shapes)."""
        return self.replace(keep=keep if self.pairs.keep is None else self.pairs.keep & keep)

    def dense_weights(self) -> Tensor:
        """(N, E) weight matrix with zeros where no pair exists (for tests and small analyses)."""
        p = self.pairs
        weight = p.weight if p.keep is None else p.weight.where(p.keep, 0)
        out = p.weight.new_zeros(self.num_tokens, self.num_experts)
        return out.index_put((p.token, p.expert), weight, accumulate=True)

    def experts_per_token(self) -> Tensor:
        """(N,) long: how many experts each token got (0..E)."""
        return count(self.pairs.token, self.num_tokens, self.pairs.keep)

    @classmethod
    def from_token_choice(
        cls,
        index: Tensor,
        weight: Tensor,
        probs: Tensor,
        ctx: RoutingContext,
        aux: dict[str, Tensor] | None = None,
        logits: Tensor | None = None,
        choice_priority: bool = True,
        priority: Tensor | None = None,
    ) -> Routing:
        """Flatten per-token choices index, weight: (N, k) into token-major pairs; masked tokens' are not kept.

        With choice_priority, all first choices outrank all second choices under capacity (GShard, V-MoE);
        within a rank, earlier tokens win. priority: (N, k), when given, is the pairs' priority instead.
        """
        n, k = index.shape
        token = torch.arange(n, device=index.device).unsqueeze(1).expand(n, k).reshape(-1)
        if priority is None and choice_priority and k > 1:
            priority = -torch.arange(k, device=index.device, dtype=probs.dtype).expand(n, k)
        keep = None if ctx.mask is None else ctx.mask.unsqueeze(1).expand(n, k).reshape(-1)
        return cls(
            token=token, expert=index.reshape(-1), weight=weight.reshape(-1), probs=probs,
            num_experts=probs.shape[1], aux=aux, priority=None if priority is None else priority.reshape(-1),
            logits=logits, mask=ctx.mask, keep=keep,
        )


@dataclass
class RouterOptions:
    """The options every router takes. A router declares its own as a subclass (inherited fields are not
    repeated, except to change a default) validated in `__post_init__`; the registry lists these fields.
    `__post_init__` validates and never resolves an "auto" value (None) in place: it stays None, so a saved config
    keeps meaning "auto" when another option changes; a property resolves it (`SoftmaxTopKOptions.renormalize`)."""

    k: int = 1

    def __post_init__(self):
        check_int("k", self.k, low=1)

    def check_experts(self, num_experts: int) -> None:
        """The checks that need the number of experts E (ValueError naming the option): k <= E, as a token-choice
        router picks k distinct experts per token."""
        if self.k > num_experts:
            raise ValueError(f"k={self.k} must be <= num_experts={num_experts} for a token-choice router")


def auto_normalize(normalize: object, k: int) -> bool:
    """A `normalize` option: True or False as given, None (auto) meaning True when k > 1."""
    if normalize is not None and not isinstance(normalize, bool):
        raise ValueError(f"normalize must be True, False or None (auto), got {normalize!r}")
    return k > 1 if normalize is None else normalize


class Router(nn.Module):
    """Base class: decides which (token, expert) pairs exist and with what weight.

    A router owns its gate parameters and its aux losses; it never touches expert weights or moves tokens.
    Subclasses implement `forward(x: (N, d), ctx) -> Routing`. State that changes between steps is updated by
    `after_step` (called by the Trainer once per optimizer step), never inside `forward`.
    `Router(d_model, num_experts, **options)`: options are the fields of the class's `Options` dataclass,
    validated there (an unknown one is a ValueError listing the valid ones); `self.options` holds them, the one
    place a router reads them from (`self.options.k`). An option that sizes tensors under torch.compile is also
    a `StaticFloat` class attribute (set here from the option).
    A router that reads `ctx.attn_probs` sets `needs_attn_probs = True` so blocks compute them eagerly.
    A router that pools over the tokens of every rank when `ctx.gather` is given sets `supports_global_view = True`.
    `example_options`: options that make a working router where the defaults do not (hash needs a vocabulary);
    `smoe check-router` builds it with them. `host_sync_in_training`: why its training forward reads the device
    on the host (None: it never does; `smoe check-router` then checks it in eval mode only).
    """

    Options: ClassVar[type[RouterOptions]] = RouterOptions
    needs_attn_probs: bool = False
    supports_global_view: bool = False
    example_options: ClassVar[dict[str, object]] = {}
    host_sync_in_training: ClassVar[str | None] = None

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__()
        check_int("d_model", d_model, low=1)
        check_int("num_experts", num_experts, low=1)
        valid = [f.name for f in fields(self.Options)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            name = getattr(type(self), "router_name", type(self).__name__)
            raise ValueError(f"unknown option(s) {unknown} for router {name!r}; valid options: {', '.join(valid)}")
        self.options = self.Options(**options)
        self.options.check_experts(num_experts)
        self.d_model, self.num_experts = d_model, num_experts
        for name in valid:
            if isinstance(getattr(type(self), name, None), StaticFloat):
                setattr(self, name, getattr(self.options, name))

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, routing_stats: list | None = None) -> None:
        """Hook the Trainer calls after each optimizer step (no-op unless a router keeps step state)."""

    def load_gate(self, weight: Tensor) -> bool:
        """Copy a trained (E, d) gate weight into this router's linear `gate` when it has one of that shape
        (training-free router swaps reuse the trained gate); False, and nothing copied, otherwise."""
        gate = getattr(self, "gate", None)
        if not isinstance(gate, nn.Linear) or gate.weight.shape != weight.shape:
            return False
        with torch.no_grad():
            gate.weight.copy_(weight)
        return True


class StaticFloat:
    """A float attribute that sizes tensors (a capacity or budget factor), kept a constant under torch.compile.

    With dynamic=True, torch.compile makes float attributes symbolic, and a size computed from a symbolic float
    cannot be traced into an autograd.Function; a float read from a tuple stays a constant (guarded: changing it
    recompiles). Reads and writes look like a plain float attribute.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: object, owner: type | None = None) -> float:
        return self if obj is None else getattr(obj, self.slot)[0]

    def __set__(self, obj: object, value: float) -> None:
        object.__setattr__(obj, self.slot, (value,))


def router_dtype(x: Tensor) -> torch.dtype:
    """Routers compute in float32, or float64 when the input is float64 (reference tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def gate_logits(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Router logits in float32 (float64 for float64 input) whatever the input dtype.

    x: (N, d), weight: (E, d) -> (N, E).
    """
    dtype = router_dtype(x)
    return nn.functional.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))


def masked_mean(values: Tensor, mask: Tensor | None, dim: int = 0) -> Tensor:
    """Mean of values over dim, counting only rows where mask is True; 0 when there are none."""
    if mask is None:
        return values.sum(dim) / max(values.shape[dim], 1)
    m = mask.to(values.dtype)
    shape = [-1 if i == dim % values.dim() else 1 for i in range(values.dim())]
    return (values * m.view(shape)).sum(dim) / m.sum().clamp_min(1)


def sample_noise(like: Tensor, generator: torch.Generator | None, uniform: bool = False) -> Tensor:
    """Standard normal (uniform [0, 1) with uniform=True) noise shaped like `like`, drawn from the context's
    generator when given (a generator=None argument would make torch.compile specialise on the shape)."""
    draw = torch.rand if uniform else torch.randn
    return draw(like.shape, dtype=like.dtype, device=like.device, **({} if generator is None else
                                                                       {"generator": generator}))


def count(index: Tensor, size: int, keep: Tensor | None = None) -> Tensor:
    """(size,) long: how many entries of index: (A,) hold each value 0..size-1, counting only where keep: (A,)
    bool is True. `bincount` with a fixed output size (bincount's size is the data's maximum + 1)."""
    ones = torch.ones_like(index) if keep is None else keep.long()
    return index.new_zeros(size).scatter_add_(0, index, ones)


def integral(value: float | Tensor, rounding: str = "ceil") -> int | Tensor:
    """value rounded up ("ceil") or half to even ("round"): an int, or a long tensor for a tensor (no host read)."""
    if isinstance(value, Tensor):
        return (torch.ceil(value) if rounding == "ceil" else torch.round(value)).long()
    return math.ceil(value) if rounding == "ceil" else round(value)
