"""Routing analytics: pure functions on `Routing` / `MoEStats` / tensors; masked tokens never count.

Legend: N tokens (flattened), E experts, A kept (token, expert) pairs, d width.

Per layer: expert load (fractions, coefficient of variation, max/mean), dropped fraction, routing entropy, active
experts, routing margin, effective rank of router inputs and features. Between two routings of one fixed token
set: routing fluctuation (two checkpoints of a layer) and co-activation (consecutive layers). Against labels:
expert specialization (NMI). Against the task: top-expert sensitivity, through `MoE.routing_transform`.
Definitions, formulas and the paper claims they measure: docs/metrics.md.

"Assigned" experts of a token are the experts of its kept pairs in the Routing (what the router decided, before
any capacity drop by the dispatcher); its top-1 expert is that of its largest-weight pair (earliest pair on ties),
or -1 when it has none. `by="probs"` uses argmax of `Routing.probs` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor

from smoe._validate import check_choice, check_int
from smoe.layer import MoEStats
from smoe.routing.base import Routing, masked_mean
from smoe.routing.losses import cv_squared, entropy

RoutingTransform = Callable[[Routing], Routing]

# ---------------------------------------------------------------- shared helpers


def real_tokens(routing: Routing) -> Tensor:
    """(N,) bool: True for the tokens that count (all of them when the routing has no mask)."""
    if routing.mask is None:
        return torch.ones(routing.num_tokens, dtype=torch.bool, device=routing.probs.device)
    return routing.mask


def _real_pairs(routing: Routing) -> Tensor:
    """(A,) bool: pairs whose token is real."""
    return real_tokens(routing)[routing.token]


def assignment_matrix(routing: Routing) -> Tensor:
    """(N, E) bool: True where a real token has a kept pair with that expert."""
    out = torch.zeros(routing.num_tokens, routing.num_experts, dtype=torch.bool, device=routing.token.device)
    keep = _real_pairs(routing)
    return out.index_put((routing.token[keep], routing.expert[keep]), torch.ones_like(keep[keep]))


def _first_max_pair(routing: Routing) -> Tensor:
    """(N,) long: index of each token's largest-weight pair (earliest on ties), A when it has none."""
    n, a = routing.num_tokens, routing.num_pairs
    w = routing.weight.detach()
    best = w.new_full((n,), -math.inf).scatter_reduce(0, routing.token, w, "amax")
    pair = torch.arange(a, device=w.device)
    candidate = torch.where(w == best[routing.token], pair, a)
    return pair.new_full((n,), a).scatter_reduce(0, routing.token, candidate, "amin")


def top1_expert(routing: Routing, by: str = "pairs") -> Tensor:
    """(N,) long: each token's top-1 expert (-1 for a token without pairs, and for masked tokens).

    by="pairs": the expert of its largest-weight kept pair; by="probs": argmax of routing.probs.
    """
    check_choice("by", by, ("pairs", "probs"))
    if by == "probs":
        top = routing.probs.argmax(-1)
    else:  # index A (no pair) reads the appended -1
        top = torch.cat([routing.expert, routing.expert.new_full((1,), -1)])[_first_max_pair(routing)]
    return torch.where(real_tokens(routing), top, -1)


def concat_routings(routings: Sequence[Routing]) -> Routing:
    """One Routing over the tokens of several calls (e.g. the batches of a held-out set), tokens in call order.

    Token ids are offset by the tokens before them; probs and masks are concatenated (a missing mask means all
    real); logits are kept when every routing has them; aux losses and priorities are dropped.
    """
    if not routings:
        raise ValueError("routings must hold at least one Routing")
    num_experts = routings[0].num_experts
    if any(r.num_experts != num_experts for r in routings):
        raise ValueError(f"routings must share num_experts, got {[r.num_experts for r in routings]}")
    offsets = torch.tensor([0] + [r.num_tokens for r in routings]).cumsum(0).tolist()
    has_mask = any(r.mask is not None for r in routings)
    has_logits = all(r.logits is not None for r in routings)
    return Routing(
        token=torch.cat([r.token + off for r, off in zip(routings, offsets)]),
        expert=torch.cat([r.expert for r in routings]),
        weight=torch.cat([r.weight for r in routings]),
        probs=torch.cat([r.probs for r in routings]),
        num_experts=num_experts,
        logits=torch.cat([r.logits for r in routings]) if has_logits else None,
        mask=torch.cat([real_tokens(r) for r in routings]) if has_mask else None,
    )


def _same_token_set(first: Routing, second: Routing) -> Tensor:
    """(N,) bool real-token mask shared by two routings of one token set; ValueError when they differ."""
    if first.num_tokens != second.num_tokens:
        raise ValueError(f"routings must cover the same tokens, got {first.num_tokens} and {second.num_tokens}")
    real = real_tokens(first)
    if not torch.equal(real, real_tokens(second)):
        raise ValueError("routings must have the same token mask (the same held-out token set)")
    return real


def _probs_and_mask(source: Routing | Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(N, E) float64 probs, detached, and the mask of real tokens."""
    if isinstance(source, Routing):
        source, mask = source.probs, source.mask if mask is None else mask
    if not isinstance(source, Tensor) or source.dim() != 2:
        raise ValueError(f"probs must be a Routing or an (N, E) tensor, got {getattr(source, 'shape', source)}")
    if mask is not None and tuple(mask.shape) != (source.shape[0],):
        raise ValueError(f"mask must have shape ({source.shape[0]},), got {tuple(mask.shape)}")
    return source.detach().double(), mask


def _nmi(a: Tensor, b: Tensor) -> float:
    """Normalized mutual information (arithmetic-mean normalisation) between two (M,) integer labelings."""
    if a.numel() == 0:
        return math.nan
    return float(normalized_mutual_info_score(a.cpu().numpy(), b.cpu().numpy()))


# ---------------------------------------------------------------- load, drops, entropy, margin


def expert_counts(source: Routing | MoEStats | Sequence[MoEStats] | Tensor) -> Tensor:
    """(E,) long pairs per expert.

    Routing: the real tokens' routed pairs (before capacity). MoEStats: the pairs the experts processed (after
    capacity); a sequence of MoEStats is summed (several batches). Tensor: (E,) counts, returned as they are.
    """
    if isinstance(source, Routing):
        return torch.bincount(source.expert[_real_pairs(source)], minlength=source.num_experts)
    if isinstance(source, MoEStats):
        return source.counts
    if isinstance(source, Tensor):
        if source.dim() != 1:
            raise ValueError(f"counts must be a 1-D (E,) tensor, got shape {tuple(source.shape)}")
        return source
    if isinstance(source, Sequence) and source and all(isinstance(s, MoEStats) for s in source):
        return torch.stack([s.counts for s in source]).sum(0)
    raise ValueError(f"expected a Routing, MoEStats, a non-empty list of MoEStats or an (E,) tensor, got {source!r}")


@dataclass
class ExpertLoad:
    """fractions: (E,) share of the pairs per expert; cv: std/mean over experts (population std); max_over_mean."""

    fractions: Tensor
    cv: float
    max_over_mean: float


def expert_load(source: Routing | MoEStats | Sequence[MoEStats] | Tensor) -> ExpertLoad:
    """Load of each expert and its imbalance (0 and 1 when perfectly balanced; NaN when there are no pairs)."""
    counts = expert_counts(source).double()
    total = counts.sum()
    if total == 0:
        return ExpertLoad(fractions=counts, cv=math.nan, max_over_mean=math.nan)
    return ExpertLoad(fractions=counts / total, cv=math.sqrt(float(cv_squared(counts))),
                      max_over_mean=float(counts.max() / counts.mean()))


def dropped_fraction(stats: MoEStats | Sequence[MoEStats]) -> float:
    """Fraction of routed pairs the dispatcher dropped for capacity, pooled over one or several calls."""
    stats = [stats] if isinstance(stats, MoEStats) else list(stats)
    if not stats:
        raise ValueError("stats must hold at least one MoEStats")
    routed = sum(int(s.routed.sum()) for s in stats)
    kept = sum(int(s.counts.sum()) for s in stats)
    return (routed - kept) / routed if routed else 0.0


def active_experts(source: Routing | MoEStats | Sequence[MoEStats] | Tensor, min_count: int = 1) -> int:
    """Number of experts with at least `min_count` pairs (SMoE-VAE: top-1 counts with min_count=10)."""
    check_int("min_count", min_count, low=1)
    return int((expert_counts(source) >= min_count).sum())


def routing_entropy(source: Routing | Tensor, mask: Tensor | None = None, normalize: bool = False) -> float:
    """Mean over real tokens of the entropy (nats) of the router distribution probs: (N, E); / log E if normalize."""
    probs, mask = _probs_and_mask(source, mask)
    h = float(masked_mean(entropy(probs), mask))
    if normalize:
        e = probs.shape[1]
        return h / math.log(e) if e > 1 else 0.0
    return h


def routing_margin(source: Routing | Tensor, mask: Tensor | None = None) -> float:
    """Mean over real tokens of p_(1) - p_(2), the gap between the two largest router probabilities."""
    probs, mask = _probs_and_mask(source, mask)
    if probs.shape[1] < 2:
        raise ValueError(f"routing margin needs at least 2 experts, got {probs.shape[1]}")
    top2 = probs.topk(2, dim=-1).values
    return float(masked_mean(top2[:, 0] - top2[:, 1], mask))


# ---------------------------------------------------------------- representation collapse


def effective_rank(x: Tensor, mask: Tensor | None = None, center: bool = False) -> float:
    """Effective rank exp(H(sigma / sum sigma)) of x: (N, d) over its real rows (Roy & Vetterli 2007).

    sigma are the singular values; 1 for rank one, min(N, d) for equal singular values, 0 for a zero matrix.
    center=True subtracts the mean row first (spread around the mean instead of around the origin).
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be an (N, d) tensor, got {getattr(x, 'shape', x)}")
    if mask is not None:
        if tuple(mask.shape) != (x.shape[0],):
            raise ValueError(f"mask must have shape ({x.shape[0]},), got {tuple(mask.shape)}")
        x = x[mask]
    x = x.detach().double()
    if center and x.shape[0]:
        x = x - x.mean(0)
    sigma = torch.linalg.svdvals(x)
    total = sigma.sum()
    if total == 0:
        return 0.0
    return math.exp(float(entropy(sigma / total)))


# ---------------------------------------------------------------- between two routings of one token set


@dataclass
class Fluctuation:
    """top1_changed: fraction of real tokens whose top-1 expert changed; topk_changed: mean of
    1 - |S_before & S_after| / max(|S_before|, |S_after|) over real tokens, S the assigned experts."""

    top1_changed: float
    topk_changed: float


def routing_fluctuation(before: Routing, after: Routing, by: str = "pairs") -> Fluctuation:
    """Routing change of one fixed token set between two checkpoints (StableMoE's fluctuation ratio).

    `by` picks how the top-1 expert is read (see `top1_expert`); the top-k set is always the assigned experts.
    A token with no expert at both checkpoints did not change; with experts at only one, it changed fully.
    """
    real = _same_token_set(before, after)
    return assignment_fluctuation(top1_expert(before, by)[real], top1_expert(after, by)[real],
                                  assignment_matrix(before)[real], assignment_matrix(after)[real])


def assignment_fluctuation(top1_before: Tensor, top1_after: Tensor, assigned_before: Tensor,
                           assigned_after: Tensor) -> Fluctuation:
    """`routing_fluctuation` from stored assignments of M real tokens (e.g. a routing trace of a training run).

    top1_*: (M,) long top-1 expert (-1: none); assigned_*: (M, E) bool assigned experts. NaN for M = 0.
    """
    m = top1_before.shape[0]
    if top1_after.shape != (m,) or assigned_before.shape != assigned_after.shape or assigned_before.shape[0] != m:
        raise ValueError(f"assignments must cover the same {m} tokens, got top-1 {tuple(top1_after.shape)} and "
                         f"sets {tuple(assigned_before.shape)}, {tuple(assigned_after.shape)}")
    if m == 0:
        return Fluctuation(math.nan, math.nan)
    top1 = top1_before != top1_after
    a, b = assigned_before.bool(), assigned_after.bool()
    common = (a & b).sum(1).double()
    size = torch.maximum(a.sum(1), b.sum(1)).double()
    set_change = torch.where(size > 0, 1 - common / size.clamp_min(1), 0.0)
    return Fluctuation(top1_changed=float(top1.double().mean()), topk_changed=float(set_change.mean()))


def coactivation(first: Routing, second: Routing, normalize: str = "given_first") -> Tensor:
    """(E1, E2) float64 co-activation of the experts of two consecutive layers over the same tokens.

    count[i, j] = real tokens assigned to expert i in `first` and to expert j in `second`.
    normalize="given_first": count[i, j] / tokens of expert i, i.e. P(j in the next layer | i) (0 for an unused i);
    "joint": count / real tokens; "count": the counts.
    """
    check_choice("normalize", normalize, ("given_first", "joint", "count"))
    real = _same_token_set(first, second)
    a, b = assignment_matrix(first)[real].double(), assignment_matrix(second)[real].double()
    count = a.t() @ b
    if normalize == "count":
        return count
    if normalize == "joint":
        return count / max(int(real.sum()), 1)
    return count / a.sum(0).clamp_min(1).unsqueeze(1)


def coactivation_nmi(first: Routing, second: Routing, by: str = "pairs") -> float:
    """Scalar summary of co-activation: NMI between the two layers' top-1 experts over real tokens.

    0 when the next layer's choice is independent of this one's, 1 when each determines the other.
    """
    real = _same_token_set(first, second)
    return _nmi(top1_expert(first, by)[real], top1_expert(second, by)[real])


def expert_specialization(source: Routing | Tensor, labels: Tensor, mask: Tensor | None = None,
                          by: str = "pairs") -> float:
    """NMI between each real token's top-1 expert and its label (topic, digit, class, style).

    source: a Routing or an (N,) long assignment; labels: N long values in any shape (e.g. (B, T)); mask: (N,)
    for a tensor source. Tokens without an expert (-1) form their own group. 1: experts are the label classes
    (up to renaming); 0: assignment independent of the label.
    """
    if isinstance(source, Routing):
        assign, real = top1_expert(source, by), (real_tokens(source) if mask is None else mask)
    elif isinstance(source, Tensor) and source.dim() == 1 and not source.is_floating_point():
        assign = source
        real = torch.ones_like(source, dtype=torch.bool) if mask is None else mask
    else:
        raise ValueError(f"source must be a Routing or an (N,) integer tensor, got {getattr(source, 'shape', source)}")
    labels = labels.reshape(-1)
    if labels.numel() != assign.numel() or labels.is_floating_point():
        raise ValueError(f"labels must hold {assign.numel()} integer values, got {labels.numel()} of {labels.dtype}")
    if tuple(real.shape) != (assign.numel(),):
        raise ValueError(f"mask must have shape ({assign.numel()},), got {tuple(real.shape)}")
    return _nmi(assign[real], labels[real])


# ---------------------------------------------------------------- top-expert sensitivity


def drop_top_expert(routing: Routing, renormalize: bool = True) -> Routing:
    """Remove each token's largest-weight pair (earliest on ties); a RoutingTransform for `routing_override`.

    renormalize: scale each token's remaining weights so they sum to what all its weights summed to before (for
    routers whose weights sum to 1, the usual renormalisation to 1). A token left with no pair gets output 0.
    """
    first = _first_max_pair(routing)
    keep = torch.ones(routing.num_pairs, dtype=torch.bool, device=routing.token.device)
    keep[first[first < routing.num_pairs]] = False
    token, weight = routing.token[keep], routing.weight[keep]
    if renormalize:
        n = routing.num_tokens
        before = routing.weight.new_zeros(n).index_add(0, routing.token, routing.weight)
        after = weight.new_zeros(n).index_add(0, token, weight)
        scale = torch.where(after != 0, before / torch.where(after != 0, after, 1), 0)
        weight = weight * scale[token]
    priority = None if routing.priority is None else routing.priority[keep]
    return routing.replace(token=token, expert=routing.expert[keep], weight=weight, priority=priority)


# ---------------------------------------------------------------- per-layer summary


def routing_summary(routing: Routing, stats: MoEStats | Sequence[MoEStats] | None = None,
                    inputs: Tensor | None = None) -> dict[str, float]:
    """The per-layer scalars for a metrics log: load imbalance, active experts, entropy, margin, drops, ranks;
    "entropy_own": the entropy of the softmax of the router's logits, its own gate before anything mixes or
    rescales it (where the router has logits; the graph routers' `probs` are the mixed distribution).

    Load is taken from `stats` (what the experts processed) when given, else from the routing. `inputs`: the
    router inputs (N, d) for `input_rank`; `feature_rank` uses routing.logits when the router provides them.
    """
    load = expert_load(stats if stats is not None else routing)
    out = {
        "load_cv": load.cv,
        "load_max_over_mean": load.max_over_mean,
        "active_experts": float(active_experts(stats if stats is not None else routing)),
        "entropy": routing_entropy(routing),
    }
    if routing.num_experts >= 2:
        out["margin"] = routing_margin(routing)
    if stats is not None:
        out["dropped_fraction"] = dropped_fraction(stats)
    if inputs is not None:
        out["input_rank"] = effective_rank(inputs, routing.mask)
    if routing.logits is not None:
        out["feature_rank"] = effective_rank(routing.logits, routing.mask)
        out["entropy_own"] = routing_entropy(torch.softmax(routing.logits.double(), dim=-1), routing.mask)
    return out
