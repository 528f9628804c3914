"""Auxiliary routing losses shared by every router: one function each, unweighted, masked tokens excluded.

probs: (N, E) router distribution; logits: (N, E); expert: (A,) chosen expert of each kept pair; mask: (N,) bool.
"""

from __future__ import annotations

import torch
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


def sequence_balance_loss(probs: Tensor, token: Tensor, expert: Tensor, seq_len: int, k: int,
                          mask: Tensor | None = None) -> Tensor:
    """DeepSeek-V3 complementary sequence-wise balance loss, averaged over sequences: mean_b sum_e f_be P_be.

    Tokens form consecutive sequences of seq_len (N = B * seq_len). For sequence b with T_b real tokens:
    f_be = E / (k T_b) * (pairs of b's tokens sent to e), P_be = mean over b's real tokens of probs[t, e].
    probs: (N, E) normalised affinities; token, expert: (A,) the kept pairs. Equals 1 under perfect balance;
    sequences without a real token are skipped. With one sequence it equals `load_balance_loss`.
    """
    n, num_experts = probs.shape
    if n == 0:
        return probs.sum() * 0.0
    if seq_len < 1 or n % seq_len:
        raise ValueError(f"seq_len must be >= 1 and divide the {n} tokens, got {seq_len}")
    num_seqs = n // seq_len
    real = torch.ones(n, dtype=probs.dtype, device=probs.device) if mask is None else mask.to(probs.dtype)
    t_b = real.view(num_seqs, seq_len).sum(1)  # (B,)
    counts = torch.bincount(torch.div(token, seq_len, rounding_mode="floor") * num_experts + expert,
                            minlength=num_seqs * num_experts).view(num_seqs, num_experts).to(probs.dtype)
    f = counts * num_experts / (k * t_b.clamp_min(1))[:, None]
    p = (probs * real[:, None]).view(num_seqs, seq_len, num_experts).sum(1) / t_b.clamp_min(1)[:, None]
    has_tokens = (t_b > 0).to(probs.dtype)
    return ((f * p).sum(1) * has_tokens).sum() / has_tokens.sum().clamp_min(1)
