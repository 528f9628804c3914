"""Auxiliary routing losses shared by every router: one function each, unweighted, masked tokens excluded.

probs: (N, E) router distribution; logits: (N, E); expert: (A,) chosen expert of each kept pair; mask: (N,) bool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from smoe.routing.base import masked_mean


def load_balance_loss(probs: Tensor, expert: Tensor, mask: Tensor | None = None) -> Tensor:
    """Switch Transformer load balancing: E * sum_e f_e * P_e.

    f_e is the fraction of the A (token, expert) pairs sent to expert e (counted before capacity drops) and
    P_e the mean router probability of e over the real tokens. Equals 1 under perfect balance for any k
    (HF transformers' Mixtral loss is k times this).
    """
    num_experts = probs.shape[1]
    counts = torch.bincount(expert, minlength=num_experts).to(probs.dtype)
    f = counts / counts.sum().clamp_min(1)
    return num_experts * (f * masked_mean(probs, mask)).sum()


def z_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """ST-MoE router z-loss: mean over real tokens of logsumexp(logits)^2."""
    return masked_mean(torch.logsumexp(logits, dim=-1) ** 2, mask)


def cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation with the population std (ddof 0): (std / mean)^2."""
    return values.var(correction=0) / values.mean().pow(2).clamp_min(torch.finfo(values.dtype).tiny)


def importance_loss(probs: Tensor, mask: Tensor | None = None) -> Tensor:
    """V-MoE / Shazeer importance loss: CV^2 over experts of sum_t P[t, e] (real tokens only)."""
    if mask is not None:
        probs = probs * mask.to(probs.dtype)[:, None]
    return cv_squared(probs.sum(0))


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) along dim, with 0 log 0 = 0."""
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(dim)


def info_nce(anchor: Tensor, positive: Tensor, temperature: float = 1.0) -> Tensor:
    """InfoNCE with in-batch negatives: mean_i -log softmax_j(cos(a_i, p_j) / temperature)[i].

    anchor, positive: (M, d), row i of each is a positive pair, every other row of `positive` a negative.
    0 when M = 0.
    """
    if anchor.shape[0] == 0:
        return anchor.new_zeros(())
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(anchor.shape[0], device=anchor.device))
