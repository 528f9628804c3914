"""Residual rules: how a block adds its FFN output to the stream, optionally with optimizer-like state across layers.

Legend: B batch, T tokens, d model width. h: (B, T, d) the stream after the block's attention; f: (B, T, d) the
FFN (MoE or dense) output. A rule maps (h, f, state, is_moe) -> (x', state'); `state` is a dict of (B, T, d)
tensors threaded through the stack by `smoe.blocks.run_blocks`, empty at the start of every forward, never
stored on a module. Rules never modify the dict they receive.

MomentumSMoE / AdamSMoE / Robust MomentumSMoE (Teo & Nguyen, NeurIPS 2024, arXiv 2410.14574) read the stack of
MoE layers as descent steps and replace the plain step by heavy ball, Adam or robust momentum across layers.
Two forms, chosen per rule with `form`:
- "canonical" (default): the pre-norm stream, the MoE output taken as the descent direction, no extra norms.
  Momentum with mu=0, gamma=1 is exactly the plain residual.
- "official": what the authors' code runs, on our pre-norm block: the MoE output is a gradient (stepped against)
  and the update is wrapped in their LayerNorms: LM rules (`residual`, `momentum`, `adam`) use the "double
  residual" x' = LN_o(h + LN_a(h + step)) on MoE blocks, robust momentum (their V-MoE code) a post-LN
  x' = LN(h + step) on every block. Each block then owns its norms, so build one rule per block.
Everything here follows the official code as read for our method notes (batch1, part 2, section 1); the paper's
own equations were not readable, so the canonical form is our restatement.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from smoe._validate import check_choice, check_float, check_int
from smoe.registry import Registry

FORMS = ("canonical", "official")
RULES: Registry[type[ResidualRule]] = Registry("residual rule", name_attr="rule_name")
register_rule = RULES.register  # class decorator: `@register_rule("momentum")`


def available_rules() -> list[str]:
    return RULES.names()


def build_rule(name: str, **options) -> ResidualRule:
    return RULES.get(name)(**options)


class ResidualRule(nn.Module):
    """How a block adds its FFN output f to the stream h; `state` is whatever the rule threads across layers.

    official_norms: LayerNorms the official form wraps the update in (2: double residual, 1: post-LN).
    """

    official_norms = 2

    def __init__(self, d_model: int | None = None, form: str = "canonical"):
        super().__init__()
        check_choice("form", form, FORMS)
        if form == "official":
            if d_model is None:
                raise ValueError("form='official' needs d_model (the rule owns LayerNorms)")
            check_int("d_model", d_model, low=1)
        self.form = form
        count = self.official_norms if form == "official" else 0
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(count))

    def forward(self, h: Tensor, f: Tensor, state: dict, is_moe: bool) -> tuple[Tensor, dict]:
        raise NotImplementedError  # pragma: no cover - abstract

    def ffn_input_shift(self, state: dict) -> Tensor | float:
        """Added to the FFN input (robust momentum looks ahead); 0 for most rules."""
        return 0.0

    def direction(self, f: Tensor) -> Tensor:
        """The descent direction: f (canonical) or -f (official: the MoE output is a gradient)."""
        return f if self.form == "canonical" else -f

    def join(self, h: Tensor, step: Tensor, inner_residual: bool = True) -> Tensor:
        """canonical h + step; official LN_o(h + LN_a(h + step)) (2 norms) or LN(h + step) (1 norm).

        inner_residual=False drops the inner h (AdamSMoE's first layer: LN_o(h + LN_a(step))).
        """
        if not self.norms:
            return h + step
        if len(self.norms) == 1:
            return self.norms[0](h + step)
        return self.norms[1](h + self.norms[0](h + step if inner_residual else step))


@register_rule("residual")
class PlainResidual(ResidualRule):
    """x' = h + f: the ordinary pre-norm transformer (official: LN_o(h + LN_a(h + f)) on MoE blocks, the
    MomentumSMoE code's baseline)."""

    def forward(self, h: Tensor, f: Tensor, state: dict, is_moe: bool) -> tuple[Tensor, dict]:
        return (self.join(h, f) if is_moe else h + f), state


@register_rule("momentum")
class HeavyBallMomentum(ResidualRule):
    """MomentumSMoE (Teo & Nguyen 2024): heavy-ball momentum across MoE layers.

    MoE block: m = mu * m + gamma * f,  x' = h + m (canonical; m starts at 0); dense blocks: x' = h + f, m passed
    through. Defaults mu=0.7, gamma=1 (the official LM scripts; their config default is mu=0.9, V-MoE used 0.8-0.9).
    mu=0, gamma=1 is the plain residual. Official form: m built from -f, x' = LN_o(h + LN_a(h + m)).
    """

    def __init__(self, d_model: int | None = None, form: str = "canonical", mu: float = 0.7, gamma: float = 1.0):
        super().__init__(d_model, form)
        check_float("mu", mu, low=0.0, high=1.0, high_open=True)
        check_float("gamma", gamma, low=0.0, low_open=True)
        self.mu, self.gamma = mu, gamma

    def forward(self, h: Tensor, f: Tensor, state: dict, is_moe: bool) -> tuple[Tensor, dict]:
        if not is_moe:
            return h + f, state
        m = self.mu * state.get("m", 0.0) + self.gamma * self.direction(f)
        return self.join(h, m), {**state, "m": m}


@register_rule("adam")
class AdamMomentum(ResidualRule):
    """AdamSMoE (Teo & Nguyen 2024): an Adam step in the first MoE layer, heavy ball in the later ones.

    First MoE block: p = (1 - beta1) f, v = (1 - beta2) f^2 (no bias correction), x' = h + gamma1 p / sqrt(v + eps),
    and the heavy-ball state m = gamma * f is seeded; later MoE blocks: m = mu m + gamma f, x' = h + m (p, v passed
    through, as in the official code); dense blocks pass everything through. Defaults (official SMoE-medium
    script): mu=0.7, gamma=1, gamma1=1, beta1=0.9, beta2=0.999, eps=1e-8 inside the sqrt.
    Official form: f negated, x' = LN_o(h + LN_a(step)) in the Adam layer (their h cancels inside LN_a),
    LN_o(h + LN_a(h + m)) after it.
    """

    def __init__(self, d_model: int | None = None, form: str = "canonical", mu: float = 0.7, gamma: float = 1.0,
                 gamma1: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(d_model, form)
        check_float("mu", mu, low=0.0, high=1.0, high_open=True)
        check_float("gamma", gamma, low=0.0, low_open=True)
        check_float("gamma1", gamma1, low=0.0, low_open=True)
        check_float("beta1", beta1, low=0.0, high=1.0, high_open=True)
        check_float("beta2", beta2, low=0.0, high=1.0, high_open=True)
        check_float("eps", eps, low=0.0, low_open=True)
        self.mu, self.gamma, self.gamma1 = mu, gamma, gamma1
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def forward(self, h: Tensor, f: Tensor, state: dict, is_moe: bool) -> tuple[Tensor, dict]:
        if not is_moe:
            return h + f, state
        d = self.direction(f)
        m = self.mu * state.get("m", 0.0) + self.gamma * d
        if "p" in state:
            return self.join(h, m), {**state, "m": m}
        p, v = (1 - self.beta1) * d, (1 - self.beta2) * d * d
        step = self.gamma1 * p / (v + self.eps).sqrt()
        return self.join(h, step, inner_residual=False), {**state, "m": m, "p": p, "v": v}


@register_rule("robust")
class RobustMomentum(ResidualRule):
    """Robust MomentumSMoE (Teo & Nguyen 2024; robust momentum of Cyrus et al. 2018) across layers.

    beta = kappa (1 - rho)^2 (1 + rho) / L, alpha = kappa rho^3 / (kappa - 1),
    epsilon = rho^3 / ((kappa - 1) (1 - rho)^2 (1 + rho)).
    Every block's FFN input is shifted by epsilon * beta * m (a look-ahead; dense blocks too);
    MoE block: m = alpha m + f, x' = h + beta m; dense block: x' = h + f.
    Defaults rho=0.2, kappa=1.25, L=1 (the official V-MoE code: beta 0.96, alpha 0.04, epsilon 1/24).
    Official form: f negated and a post-LN on every block, x' = LN(h + beta m) / LN(h + f).
    """

    official_norms = 1

    def __init__(self, d_model: int | None = None, form: str = "canonical", rho: float = 0.2, kappa: float = 1.25,
                 lipschitz: float = 1.0):
        super().__init__(d_model, form)
        check_float("rho", rho, low=0.0, high=1.0, low_open=True, high_open=True)
        check_float("kappa", kappa, low=1.0, low_open=True)
        check_float("lipschitz", lipschitz, low=0.0, low_open=True)
        self.beta = kappa * (1 - rho) ** 2 * (1 + rho) / lipschitz
        self.alpha = kappa * rho**3 / (kappa - 1)
        self.epsilon = rho**3 / ((kappa - 1) * (1 - rho) ** 2 * (1 + rho))
        if not all(math.isfinite(c) for c in (self.beta, self.alpha, self.epsilon)):
            raise ValueError(f"rho={rho}, kappa={kappa}, lipschitz={lipschitz} give non-finite coefficients")

    def ffn_input_shift(self, state: dict) -> Tensor | float:
        m = state.get("m")
        return 0.0 if m is None else self.epsilon * self.beta * m

    def forward(self, h: Tensor, f: Tensor, state: dict, is_moe: bool) -> tuple[Tensor, dict]:
        if not is_moe:
            return self.join(h, f), state
        m = self.alpha * state.get("m", 0.0) + self.direction(f)
        return self.join(h, self.beta * m), {**state, "m": m}
