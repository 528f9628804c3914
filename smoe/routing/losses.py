"""Auxiliary routing losses shared by every router: one function each, unweighted, masked tokens excluded.

probs: (N, E) router distribution; logits: (N, E); expert: (A,) chosen expert of each pair; mask: (N,) bool;
keep: (A,) bool or None -- which of the A entries are pairs (the candidates of `Routing.pairs`; None: all).
Fixed shapes throughout: no host read, no output whose size depends on the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from smoe.routing.base import count, masked_mean


def load_balance_loss(probs: Tensor, expert: Tensor, mask: Tensor | None = None, keep: Tensor | None = None
                      ) -> Tensor:
    """Switch Transformer load balancing: E * sum_e f_e * P_e.

    f_e is the fraction of the A (token, expert) pairs sent to expert e (counted before capacity drops) and
    P_e the mean router probability of e over the real tokens. Equals 1 under perfect balance for any k
    (HF transformers' Mixtral loss is k times this).
    """
    num_experts = probs.shape[1]
    counts = count(expert, num_experts, keep).to(probs.dtype)
    f = counts / counts.sum().clamp_min(1)
    return num_experts * (f * masked_mean(probs, mask)).sum()


def z_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """ST-MoE router z-loss: mean over real tokens of logsumexp(logits)^2."""
    return masked_mean(torch.logsumexp(logits, dim=-1) ** 2, mask)


def cv_squared(values: Tensor, dim: int = -1) -> Tensor:
    """Squared coefficient of variation along dim with the population std (ddof 0): (std / mean)^2."""
    return values.var(dim, correction=0) / values.mean(dim).pow(2).clamp_min(torch.finfo(values.dtype).tiny)


def grouped_cv_squared(values: Tensor, mask: Tensor | None = None, group: Tensor | None = None) -> Tensor:
    """Mean over routing groups of CV^2 over experts of sum_t values[t, e] (real tokens only).

    values: (N, E); group: (N,) long group id of each token, in 0..N-1 (None: one group). Groups without a real
    token are left out of the mean; 0 when there is none.
    """
    real = values.new_ones(values.shape[0]) if mask is None else mask.to(values.dtype)
    if group is None:
        return cv_squared((values * real[:, None]).sum(0)) if values.shape[0] else values.new_zeros(())
    sums = values.new_zeros(values.shape).index_add(0, group, values * real[:, None])  # (N possible groups, E)
    present = values.new_zeros(values.shape[0]).index_add(0, group, real) > 0
    return cv_squared(sums, dim=1).where(present, 0).sum() / present.sum().clamp_min(1)


def importance_loss(probs: Tensor, mask: Tensor | None = None, group: Tensor | None = None) -> Tensor:
    """V-MoE / Shazeer importance loss: CV^2 over experts of sum_t P[t, e] (real tokens only), per group."""
    return grouped_cv_squared(probs, mask, group)


def noisy_load_loss(logits: Tensor, noisy_logits: Tensor, noise_std: float, k: int, mask: Tensor | None = None,
                    group: Tensor | None = None) -> Tensor:
    """V-MoE load loss: CV^2 over experts of load_e = mean_t Phi((H[t, e] - eta_t) / sigma), per group.

    logits H: (N, E) clean, noisy_logits: (N, E) = H + N(0, sigma^2) noise, noise_std: sigma; eta_t is the k-th
    largest noisy logit of token t over all experts (e included; gradients flow through it). Phi is the standard
    normal CDF, so the term is P(noisy H[t, e] >= eta_t) under a fresh noise draw for (t, e) alone.
    """
    eta = noisy_logits.topk(k, dim=-1).values[:, -1:]
    return grouped_cv_squared(torch.special.ndtr((logits - eta) / noise_std), mask, group)


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) along dim, with 0 log 0 = 0."""
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(dim)


def sequence_balance_loss(probs: Tensor, token: Tensor, expert: Tensor, seq_len: int, k: int,
                          mask: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
    """DeepSeek-V3 complementary sequence-wise balance loss, averaged over sequences: mean_b sum_e f_be P_be.

    Tokens form consecutive sequences of seq_len (N = B * seq_len). For sequence b with T_b real tokens:
    f_be = E / (k T_b) * (pairs of b's tokens sent to e), P_be = mean over b's real tokens of probs[t, e].
    probs: (N, E) normalised affinities; token, expert: (A,) the pairs. Equals 1 under perfect balance;
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
    counts = count(torch.div(token, seq_len, rounding_mode="floor") * num_experts + expert,
                   num_seqs * num_experts, keep).view(num_seqs, num_experts).to(probs.dtype)
    f = counts * num_experts / (k * t_b.clamp_min(1))[:, None]
    p = (probs * real[:, None]).view(num_seqs, seq_len, num_experts).sum(1) / t_b.clamp_min(1)[:, None]
    has_tokens = (t_b > 0).to(probs.dtype)
    return ((f * p).sum(1) * has_tokens).sum() / has_tokens.sum().clamp_min(1)


def info_nce(anchor: Tensor, positive: Tensor, temperature: float = 1.0) -> Tensor:
    """InfoNCE with in-batch negatives: mean_i -log softmax_j(cos(a_i, p_j) / temperature)[i].

    anchor, positive: (M, d), row i of each is a positive pair, every other row of `positive` a negative.
    0 when M = 0.
    """
    if anchor.shape[0] == 0:
        return anchor.new_zeros(())
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(anchor.shape[0], device=anchor.device))
