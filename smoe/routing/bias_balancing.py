"""Aux-loss-free load balancing: a per-expert bias on the selection scores, moved after each optimizer step.

Wang et al. 2024 ("Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts") and DeepSeek-V3
(2024, section 2.1.2): expert e is chosen by top-k of `score + b_e`, its gate weight still comes from `score`,
and after each training step `b_e += rate * sign(mean_load - load_e)` (rate 0.001). Reconstructed, not checked
against the papers (their text was not available); the choice/weight split was checked against DeepSeek-V3's
released inference code, the update rule against Megatron-LM's and torchtitan's. The bias is not trained by
gradient: it is a buffer (saved in `state_dict`, so it survives checkpoints) that only `after_step` changes,
once per optimizer step, from the loads of every micro-batch of that step.

Legend: N tokens, E experts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from smoe._validate import check_float


class BiasBalancing:
    """Mixin for a `Router` that opts in to aux-loss-free balancing (list it before `Router` in the bases).

    The router calls `init_bias_balancing(rate)` in `__init__` and ranks experts by `biased(scores)`.
    rate=None: no bias at all (nothing in `state_dict`); rate=0: a frozen bias (kept, never moved).
    The bias stays float32 whatever dtype the model is cast to: steps of 1e-3 vanish in bfloat16.
    """

    expert_bias: Tensor | None

    def init_bias_balancing(self, rate: float | None) -> None:
        if rate is not None:
            check_float("bias_rate", rate, low=0.0)
        bias = None if rate is None else torch.zeros(self.num_experts, dtype=torch.float32)
        self.register_buffer("expert_bias", bias)

    def biased(self, scores: Tensor) -> Tensor:
        """scores: (N, E) -> scores + b (unchanged without a bias); only for choosing experts, never as weights."""
        if self.expert_bias is None:
            return scores
        return scores + self.expert_bias.to(scores.dtype)

    @torch.no_grad()
    def after_step(self, routing_stats: list | None = None) -> None:
        """b += rate * sign(mean_load - load), load = pairs per expert before capacity, summed over the step's
        micro-batches (`MoEStats.routed` of each), so gradient accumulation moves the bias once per step."""
        super().after_step(routing_stats)
        if self.expert_bias is None:
            return
        if not routing_stats:
            raise ValueError(
                "bias balancing needs this layer's MoEStats of the step: call after_step([stats of every "
                "micro-batch]) once per optimizer step"
            )
        load = torch.stack([s.routed for s in routing_stats]).sum(0).to(self.expert_bias)
        self.expert_bias.add_(self.options.bias_rate * torch.sign(load.mean() - load))

    def _apply(self, fn, recurse=True):
        kept = self.expert_bias
        out = super()._apply(fn, recurse)
        if kept is not None and self.expert_bias.dtype != kept.dtype:
            self.expert_bias = kept.to(self.expert_bias.device)
        return out
