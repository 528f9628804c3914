"""Dispatcher: a `Routing` becomes contiguous per-expert groups of rows, and expert outputs are combined back.

Legend: N tokens, E experts, S candidate pairs of the Routing (`Routing.pairs`), A of them kept by the router,
A' <= A kept after capacity, d model width.
Sort-based (MegaBlocks / ScatterMoE style): no Python loop over tokens, no dense (N, E, C) one-hot tensor, and
every shape follows from S alone: no host read, no op whose output size depends on the data, so a plan is
made without waiting for the device and compiles with torch.compile(fullgraph=True).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from smoe._validate import check_choice, check_float, check_int
from smoe.routing.base import Pairs, Routing, count, integral


@dataclass
class DispatchPlan:
    """Where every kept pair goes, as R = S rows: the A' kept pairs first, grouped by expert (experts in
    order), then R - A' padding rows (not-kept or dropped candidates) that the dispatch zeroes.

    row_token: (R,) long -- source token of each row; row_weight: (R,) -- its combine weight;
    row_pair: (R,) long -- index of its candidate in `Routing.pairs`;
    valid: (R,) bool or None -- rows that hold a kept pair (None: all of them, no padding);
    counts: (E,) long -- kept rows per expert (group sizes); routed: (E,) long -- pairs per expert before capacity;
    capacity: per-expert capacity C, or None (dropless); with routing groups, the largest group's C. An int
    when it follows from the shapes, else (a mask, candidates not kept, routing groups) a 0-dim long tensor.
    token, weight, pair: (A',) the kept rows only (with padding, reading them is a host sync on a GPU).
    """

    row_token: Tensor
    row_weight: Tensor
    row_pair: Tensor
    counts: Tensor
    routed: Tensor
    capacity: int | Tensor | None
    valid: Tensor | None = None

    token = property(lambda self: self._kept(self.row_token), doc="(A',) long: source token of each kept row.")
    weight = property(lambda self: self._kept(self.row_weight), doc="(A',): combine weight of each kept row.")
    pair = property(lambda self: self._kept(self.row_pair), doc="(A',) long: candidate index of each kept row.")

    def _kept(self, rows: Tensor) -> Tensor:
        return rows if self.valid is None else rows[self.valid]

    def kept(self) -> DispatchPlan:
        """The same plan without padding rows (R = A'; a host sync on a GPU when there is padding)."""
        if self.valid is None:
            return self
        return replace(self, row_token=self.token, row_weight=self.weight, row_pair=self.pair, valid=None)

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

    def capacity(self, num_pairs: int | Tensor) -> int | Tensor | None:
        """Per-expert capacity for A routed pairs (None when dropless); a long tensor for a long tensor A."""
        if self.capacity_factor is None:
            return None
        pairs = num_pairs.double() if isinstance(num_pairs, Tensor) else num_pairs
        c = integral(self.capacity_factor * pairs / self.num_experts, self.capacity_rounding)
        m = self.capacity_multiple
        return m * ((c + m - 1) // m)

    def plan(self, routing: Routing) -> DispatchPlan:
        """Sort the kept pairs of `routing` by expert (stable) and drop those beyond capacity; fixed shapes."""
        e = self.num_experts
        if routing.num_experts != e:
            raise ValueError(f"routing has {routing.num_experts} experts, the dispatcher {e}")
        pairs = routing.pairs
        routed = count(pairs.expert, e, pairs.keep)
        if self.capacity_factor is None:
            key = pairs.expert if pairs.keep is None else pairs.expert.masked_fill(~pairs.keep, e)
            order = torch.argsort(key, stable=True)  # not-kept candidates last
            valid = None if pairs.keep is None else pairs.keep[order]
            return self._rows(pairs, order, valid, counts=routed, routed=routed, capacity=None)
        order, kept, capacity = self._capacity_order(pairs)
        counts = count(pairs.expert[order], e, kept)
        last = torch.argsort((~kept).to(torch.uint8), stable=True)  # dropped rows last, each part in expert order
        return self._rows(pairs, order[last], kept[last], counts=counts, routed=routed, capacity=capacity)

    def _capacity_order(self, pairs: Pairs) -> tuple[Tensor, Tensor, int | Tensor]:
        """(S,) candidates in (expert, group, priority) order, which of them survive capacity, and C.

        A candidate's slot is its rank within its (expert, group) bucket; it survives when slot < C of its group.
        Candidates not kept form a bucket of their own after every expert's, so they take no slot.
        """
        s = pairs.token.numel()
        group = None if pairs.group is None else self._group_ids(pairs.group)
        if group is None:
            capacity = self.capacity(s if pairs.keep is None else pairs.keep.sum())
            bucket = pairs.expert
        else:  # group ids in [0, S): each (expert, group) bucket is expert * S + group
            per_group = self.capacity(count(group, s, pairs.keep))  # (S,) C of each group id
            capacity = per_group.max() if s else 0
            bucket = pairs.expert * s + group
        if pairs.keep is not None:
            bucket = bucket.masked_fill(~pairs.keep, self.num_experts * s)
        order = self._priority_order(pairs)
        order = order[torch.argsort(bucket[order], stable=True)]
        sorted_bucket = bucket[order]
        slot = torch.arange(s, device=order.device) - torch.searchsorted(sorted_bucket, sorted_bucket)
        kept = slot < (capacity if group is None else per_group[group[order]])
        return order, kept if pairs.keep is None else kept & pairs.keep[order], capacity

    @staticmethod
    def _group_ids(group: Tensor) -> Tensor:
        """(S,) group ids in [0, S): each group's first position in sorted order (any ids -> a fixed range)."""
        sorted_group, order = torch.sort(group, stable=True)
        return torch.empty_like(group).scatter_(0, order, torch.searchsorted(sorted_group, sorted_group))

    @staticmethod
    def _priority_order(pairs: Pairs) -> Tensor:
        if pairs.priority is None:
            return torch.arange(pairs.token.numel(), device=pairs.expert.device)
        return torch.argsort(pairs.priority, descending=True, stable=True)

    @staticmethod
    def _rows(pairs: Pairs, order: Tensor, valid: Tensor | None, **plan) -> DispatchPlan:
        return DispatchPlan(row_token=pairs.token[order], row_weight=pairs.weight[order], row_pair=order, valid=valid,
                            **plan)

    @staticmethod
    def dispatch(x: Tensor, plan: DispatchPlan) -> Tensor:
        """x: (N, d) -> (R, d) rows grouped by expert, padding rows zero."""
        rows = x.index_select(0, plan.row_token)
        return rows if plan.valid is None else rows.where(plan.valid[:, None], 0)

    @staticmethod
    def combine(rows: Tensor, plan: DispatchPlan, num_tokens: int) -> Tensor:
        """rows: (R, d) expert outputs -> (N, d) = sum over each token's kept rows of weight * row.

        Padding rows are zeroed first (whatever the experts left there, gradients included)."""
        if plan.valid is not None:
            rows = rows.where(plan.valid[:, None], 0)
        weighted = rows * plan.row_weight.to(rows.dtype).unsqueeze(1)
        out = rows.new_zeros(num_tokens, rows.shape[1])
        return out.index_add_(0, plan.row_token, weighted)
