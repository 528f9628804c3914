"""Dispatcher: a `Routing` becomes contiguous per-expert groups of rows, and expert outputs are combined back.

Legend: N tokens, E experts, A routed pairs, A' kept pairs (A' <= A after capacity), d model width.
Sort-based (MegaBlocks / ScatterMoE style): no Python loop over tokens, no dense (N, E, C) one-hot tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from smoe._validate import check_choice, check_float, check_int
from smoe.routing.base import Routing


@dataclass
class DispatchPlan:
    """Where every kept pair goes.

    token: (A',) long -- source token of each grouped row; rows are grouped by expert, experts in order.
    weight: (A',) -- combine weight of each grouped row.
    pair: (A',) long -- index of the row's pair in the Routing.
    counts: (E,) long -- kept rows per expert (group sizes).
    routed: (E,) long -- pairs per expert before capacity.
    capacity: per-expert capacity C, or None (dropless); with routing groups, the largest group's C.
    """

    token: Tensor
    weight: Tensor
    pair: Tensor
    counts: Tensor
    routed: Tensor
    capacity: int | None

    @property
    def dropped_fraction(self) -> Tensor:
        """Fraction of the routed pairs dropped by capacity (0-dim float tensor)."""
        routed = self.routed.sum()
        return (routed - self.counts.sum()).float() / routed.clamp_min(1).float()


class Dispatcher:
    """Groups routed pairs by expert, applies capacity, and combines expert outputs back.

    capacity_factor=None: dropless. A number: C = ceil(capacity_factor * A / E) (or round, half to even, with
    capacity_rounding="round"), then rounded up to a multiple of `capacity_multiple`; pairs beyond C are
    dropped in priority order (Routing.priority, higher survives; ties and no priority: pair order).
    With Routing.group set, each (group, expert) has its own C computed from the A_g pairs of its group.
    """

    def __init__(self, num_experts: int, capacity_factor: float | None = None, capacity_rounding: str = "ceil",
                 capacity_multiple: int = 1):
        check_int("num_experts", num_experts, low=1)
        if capacity_factor is not None:
            check_float("capacity_factor", capacity_factor, low=0.0, low_open=True)
        check_choice("capacity_rounding", capacity_rounding, ("ceil", "round"))
        check_int("capacity_multiple", capacity_multiple, low=1)
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.capacity_rounding = capacity_rounding
        self.capacity_multiple = capacity_multiple

    def capacity(self, num_pairs: int) -> int | None:
        """Per-expert capacity for A routed pairs (None when dropless)."""
        if self.capacity_factor is None:
            return None
        raw = self.capacity_factor * num_pairs / self.num_experts
        c = math.ceil(raw) if self.capacity_rounding == "ceil" else round(raw)
        return self.capacity_multiple * math.ceil(c / self.capacity_multiple)

    def plan(self, routing: Routing) -> DispatchPlan:
        """Sort the pairs of `routing` by expert (stable) and drop those beyond capacity."""
        e = self.num_experts
        if routing.num_experts != e:
            raise ValueError(f"routing has {routing.num_experts} experts, the dispatcher {e}")
        expert, group = routing.expert, routing.group
        routed = torch.bincount(expert, minlength=e)
        if self.capacity_factor is None:
            order = torch.argsort(expert, stable=True)
            counts, capacity = routed, None
        else:
            num_groups = int(group.max()) + 1 if group is not None and group.numel() else 1
            pairs = [expert.numel()] if group is None else torch.bincount(group, minlength=num_groups).tolist()
            capacities = [self.capacity(a) for a in pairs]
            bucket = expert if group is None else expert * num_groups + group  # (expert, group), expert-major
            order = self._priority_order(routing)
            order = order[torch.argsort(bucket[order], stable=True)]
            sizes = torch.bincount(bucket, minlength=e * num_groups)
            start = torch.cumsum(sizes, 0) - sizes
            slot = torch.arange(order.numel(), device=order.device) - start[bucket[order]]
            limit = capacities[0] if group is None else torch.tensor(capacities, device=order.device)[group[order]]
            order = order[slot < limit]
            counts, capacity = torch.bincount(expert[order], minlength=e), max(capacities)
        return DispatchPlan(token=routing.token[order], weight=routing.weight[order], pair=order, counts=counts,
                            routed=routed, capacity=capacity)

    @staticmethod
    def _priority_order(routing: Routing) -> Tensor:
        if routing.priority is None:
            return torch.arange(routing.num_pairs, device=routing.expert.device)
        return torch.argsort(routing.priority, descending=True, stable=True)

    @staticmethod
    def dispatch(x: Tensor, plan: DispatchPlan) -> Tensor:
        """x: (N, d) -> (A', d) rows grouped by expert."""
        return x.index_select(0, plan.token)

    @staticmethod
    def combine(rows: Tensor, plan: DispatchPlan, num_tokens: int) -> Tensor:
        """rows: (A', d) expert outputs -> (N, d) = sum over each token's pairs of weight * row."""
        weighted = rows * plan.weight.to(rows.dtype).unsqueeze(1)
        out = rows.new_zeros(num_tokens, rows.shape[1])
        return out.index_add_(0, plan.token, weighted)
