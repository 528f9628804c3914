"""DeepSeek-V3 routing: sigmoid affinities, bias-balanced top-k, group-limited choice, sequence-wise balance loss.

References: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report" (arXiv 2412.19437, section 2.1.2), and the
official inference code (deepseek-ai/DeepSeek-V3, inference/model.py, class Gate). The choice, group limit,
weights and scaling were checked against that code (and HF transformers' DeepseekV3TopkRouter); what only the
report states (the sequence-wise loss, alpha, the node-limited k / M rule) is reconstructed, not checked against
the paper. docs/routers.md lists which is which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_bool, check_float, check_int
from smoe.routing.base import Router, RouterOptions, Routing, RoutingContext, gate_logits
from smoe.routing.bias_balancing import BiasBalancing
from smoe.routing.losses import sequence_balance_loss
from smoe.routing.registry import register_router


@dataclass
class DeepSeekOptions(RouterOptions):
    """Options of `deepseek` (see `DeepSeekRouter`); topk_group None means n_group, group_score_topk None the
    release's rule (2 with the expert bias, 1 = the group maximum without it)."""

    k: int = 2
    n_group: int = 1
    topk_group: int | None = None
    group_score_topk: int | None = None
    normalize: bool = True
    routed_scaling_factor: float = 1.0
    bias_rate: float | None = 0.001
    seq_aux_coef: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        check_int("n_group", self.n_group, low=1)
        if self.topk_group is not None:
            check_int("topk_group", self.topk_group, low=1, high=self.n_group)
        if self.group_score_topk is not None:
            check_int("group_score_topk", self.group_score_topk, low=1)
        check_bool("normalize", self.normalize)
        check_float("routed_scaling_factor", self.routed_scaling_factor, low=0.0, low_open=True)
        check_float("seq_aux_coef", self.seq_aux_coef, low=0.0)

    def check_experts(self, num_experts: int) -> None:
        super().check_experts(num_experts)
        if num_experts % self.n_group:
            raise ValueError(f"n_group={self.n_group} must divide num_experts={num_experts}")
        group_size = num_experts // self.n_group
        if self.n_group > 1:
            check_int("group_score_topk", self.group_score_k, high=group_size)
        reachable = self.kept_groups * group_size
        if self.k > reachable:
            raise ValueError(f"k={self.k} must be <= topk_group * experts per group = {reachable}")

    @property
    def kept_groups(self) -> int:
        """`topk_group` resolved: None means n_group (every group eligible)."""
        return self.n_group if self.topk_group is None else self.topk_group

    @property
    def group_score_k(self) -> int:
        """`group_score_topk` resolved: None means 2 with the expert bias, 1 (the group maximum) without it."""
        if self.group_score_topk is not None:
            return self.group_score_topk
        return 1 if self.bias_rate is None else 2


@register_router("deepseek")
class DeepSeekRouter(BiasBalancing, Router):
    """DeepSeek-V3 (DeepSeek-AI 2024): sigmoid gating, top-k of s + b with aux-loss-free bias, group-limited routing.

    s = sigmoid(x W_g): (N, E). Experts are chosen by top-k of s + b, where b is the aux-loss-free bias
    (`bias_rate`, see `BiasBalancing`; 0.001 as in the report; None removes it). Gate weights are s of the chosen
    experts (never s + b), divided by their sum when `normalize` (the release always does for sigmoid
    scores), then times `routed_scaling_factor` (2.5 in the V3 release config; 1.0 here, the release default).
    Group-limited routing (`n_group` > 1): the E experts form n_group consecutive groups, a group scores the
    sum of its `group_score_topk` largest s + b, and only the best `topk_group` groups stay eligible. Default
    (None): the release's rule, the sum of the top 2 with the expert bias (V3) and the group maximum (top 1)
    without it (bias_rate=None); the report's node-limited rule sums the top k / M per node, M the number of
    nodes (k // topk_group here), also 2 for V3 (k = 8, M = 4): pass that to follow it (reconstructed, not
    checked against the paper).
    Aux loss: the report's complementary sequence-wise balance loss, coefficient `seq_aux_coef` (alpha =
    1e-4 in the report; 0 disables it), per sequence (the last axis of the layer input) on the normalised
    affinities s / sum(s), f counted from the experts actually chosen (after bias and group limits), as in
    Megatron-LM (reconstructed, not checked against the paper).
    Routing.probs holds s / sum(s) (a distribution, for losses and metrics) and Routing.logits the x W_g.
    """

    Options = DeepSeekOptions

    def __init__(self, d_model: int, num_experts: int, **options):
        super().__init__(d_model, num_experts, **options)
        self.gate = nn.Linear(d_model, num_experts, bias=False)
        self.init_bias_balancing(self.options.bias_rate)

    def limit_groups(self, choice: Tensor) -> Tensor:
        """choice: (N, E) selection scores -> the same with every expert outside the best topk_group groups -inf."""
        if self.options.kept_groups == self.options.n_group:
            return choice
        grouped = choice.view(choice.shape[0], self.options.n_group, -1)  # (N, G, E / G)
        group_score = grouped.topk(self.options.group_score_k, dim=-1).values.sum(-1)  # (N, G)
        best = group_score.topk(self.options.kept_groups, dim=-1).indices
        allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~allowed.unsqueeze(-1), float("-inf")).view_as(choice)

    def forward(self, x: Tensor, ctx: RoutingContext) -> Routing:
        """x: (N, d) -> Routing with k pairs per real token."""
        logits = gate_logits(x, self.gate.weight)
        scores = torch.sigmoid(logits)
        index = self.limit_groups(self.biased(scores)).topk(self.options.k, dim=-1).indices  # (N, k)
        # s / sum(s) as softmax(log s): finite when every s underflows to 0 (logits below about -104 in float32)
        log_scores = F.logsigmoid(logits)
        weight = torch.softmax(log_scores.gather(1, index), -1) if self.options.normalize else scores.gather(1, index)
        weight = weight * self.options.routed_scaling_factor
        probs = torch.softmax(log_scores, dim=-1)
        routing = Routing.from_token_choice(index, weight, probs, ctx, logits=logits)
        if self.options.seq_aux_coef > 0:
            seq_len = ctx.batch_shape[-1] if ctx.batch_shape is not None and len(ctx.batch_shape) > 1 else x.shape[0]
            pairs = routing.pairs
            routing.aux["seq_balance"] = self.options.seq_aux_coef * sequence_balance_loss(
                probs, pairs.token, pairs.expert, seq_len, self.options.k, ctx.mask, pairs.keep)
        return routing
