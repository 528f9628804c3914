"""Entropic optimal transport between tokens and experts: one log-domain Sinkhorn shared by every OT router.

Legend: N tokens, E experts. `score` is a compatibility (higher = more mass), i.e. the negative of a transport
cost. The plan solves

    max_P  <P, score> + eps * H(P)   s.t.  P 1_E = row_mass,  P^T 1_N = col_mass,  P >= 0,

whose solution is P = diag(u) exp(score / eps) diag(v) (Cuturi 2013). The scalings are iterated in the log domain
(f = log u, g = log v, logsumexp updates), so score / eps of any size (logits of +-1e4) stays finite, and in
float32 or wider whatever the input dtype. Shapes stay fixed (masked rows are rows of mass 0), and the host reads
the convergence error only every `check_every` rounds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from smoe._validate import check_choice, check_float, check_int
from smoe.routing.base import router_dtype


def sinkhorn_plan(
    score: Tensor,
    eps: float = 1.0,
    row_mass: float | Tensor = 1.0,
    col_mass: float | Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    mask: Tensor | None = None,
    check_every: int = 10,
) -> Tensor:
    """Entropic OT plan (N, E) for score: (N, E), computed in float32 (float64 for float64 input).

    row_mass: scalar or (N,) positive mass each token sends; col_mass: scalar or (E,) mass each expert receives;
    None spreads the total row mass uniformly over the E experts. Their totals must agree (relative 1e-6; checked
    only when col_mass is given, which reads them on the host).
    mask: (N,) bool; masked rows are left out of the problem (their row of the plan is 0 and they take no column
    mass). Stops after `max_iter` rounds, or earlier at the first check (every `check_every` rounds: each check is
    a host read of the device) that finds the largest row-marginal error <= `tol` (each round ends with the
    column update, so the column marginals are then exact up to rounding).
    Differentiable: gradients flow through the unrolled iterations (detach `score` to stop them).
    """
    if score.dim() != 2:
        raise ValueError(f"score must have shape (N, E), got {tuple(score.shape)}")
    check_float("eps", eps, low=0.0, low_open=True)
    check_int("max_iter", max_iter, low=1)
    check_float("tol", tol, low=0.0)
    check_int("check_every", check_every, low=1)
    n, e = score.shape
    dtype = router_dtype(score)
    rows = _mass("row_mass", row_mass, n, score.device, dtype)
    if mask is not None:
        if mask.shape != (n,) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape ({n},), got {mask.dtype} {tuple(mask.shape)}")
        rows = rows.where(mask | ~mask.any(), 0)  # all rows masked: solve the whole problem, return zeros
    total = rows.sum()
    if col_mass is None:
        cols = (total / e).expand(e)
    else:
        cols = _mass("col_mass", col_mass, e, score.device, dtype)
        if not torch.allclose(cols.sum(), total, rtol=1e-6, atol=0.0):
            raise ValueError(f"row_mass and col_mass must have the same total, got {float(total)} and "
                             f"{float(cols.sum())}")
    plan = _scaling_iterations(score.to(dtype) / eps, rows, cols, max_iter, tol, check_every) if n else score.to(dtype)
    return plan if mask is None else plan.where(mask[:, None], 0)


def _mass(name: str, mass: float | Tensor, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(mass, Tensor):
        if mass.shape not in ((), (size,)):
            raise ValueError(f"{name} must be a scalar or have shape ({size},), got {tuple(mass.shape)}")
        if not bool((mass > 0).all()):
            raise ValueError(f"{name} must be positive")
        return mass.to(device=device, dtype=dtype).expand(size)
    check_float(name, mass, low=0.0, low_open=True)
    return torch.full((size,), float(mass), device=device, dtype=dtype)


def _scaling_iterations(log_kernel: Tensor, rows: Tensor, cols: Tensor, max_iter: int, tol: float,
                        check_every: int) -> Tensor:
    """Log-domain Sinkhorn on log_kernel: (n, E) with marginals rows: (n,) >= 0 (0: a row out of the problem),
    cols: (E,) > 0 -> plan (n, E)."""
    log_rows, log_cols = rows.log(), cols.log()
    g = log_cols.new_zeros(log_cols.shape)
    row_lse = torch.logsumexp(log_kernel + g, dim=1)
    for i in range(1, max_iter + 1):
        f = log_rows - row_lse
        g = log_cols - torch.logsumexp(log_kernel + f[:, None], dim=0)
        row_lse = torch.logsumexp(log_kernel + g, dim=1)
        if i % check_every == 0 and float((torch.exp(f + row_lse) - rows).abs().max().detach()) <= tol:
            break  # the error is the largest gap between the row sums of the current plan and their masses
    return torch.exp(log_kernel + f[:, None] + g)


def balanced_plan(
    logits: Tensor,
    mask: Tensor | None = None,
    cost: str = "logits",
    eps: float = 1.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    grad: bool = True,
) -> Tensor:
    """Router-facing plan (N, E): each real token sends mass 1, each expert receives N_real / E.

    logits: (N, E) router logits; cost="logits" scores with the logits, cost="probs" with softmax(logits).
    With cost="logits" and eps=1 the plan's rows are softmax(logits + b) for one balancing bias b: (E,).
    grad=False computes the plan without autograd (it then only decides, and weighs, as a constant).
    """
    check_choice("cost", cost, ("logits", "probs"))
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        score = logits if cost == "logits" else torch.softmax(logits, dim=-1)
        return sinkhorn_plan(score if grad else score.detach(), eps=eps, row_mass=1.0, max_iter=max_iter, tol=tol,
                             mask=mask)
