"""Every registered router, in float32, bfloat16 and float64, with extreme gate logits (+-1e4, all equal, all very
negative): probabilities, weights, aux losses, outputs and gradients stay finite (issue 19, item 4). And an empty
batch routes to nothing without an error."""

import pytest
import torch

from smoe import MoE
from smoe.routing import available_routers

E, D = 4, 8
OPTIONS = {"hash": {"vocab_size": 16}, "ssr": {"p": 1.0},  # ssr: always the Sinkhorn branch in training
           "xmoe": {"normalize_tokens": False, "temperature": None}}  # the release's unbounded scores


def gate_weight(case: str) -> torch.Tensor:
    """(E, D) gate weights; with inputs in [1, 2] the logits are +-1e4 ("huge"), all 0 ("equal") or all in
    about [-3.2e4, -8e3], far below where sigmoid and exp underflow ("very_negative")."""
    g = torch.Generator().manual_seed(1)
    if case == "huge":
        return torch.randn(E, D, generator=g).sign() * 1e3
    if case == "equal":
        return torch.zeros(E, D)
    return -1e3 * (1 + torch.rand(E, D, generator=g))


def set_logits(router, weight: torch.Tensor) -> None:
    """Make the router's logits x W^T for a hand-chosen W: (E, D)."""
    with torch.no_grad():
        if hasattr(router, "expert_emb"):  # xmoe: scores = (R x) . m_e / |m_e| with m_e the unit vectors
            router.expert_emb.copy_(torch.eye(E, router.expert_emb.shape[1]))
            router.proj.weight.zero_()
            router.proj.weight[:E] = weight
        elif hasattr(router, "gate"):
            router.gate.weight.copy_(weight)


def run(m, x, dtype):
    b, t = x.shape[:2]
    ids = torch.arange(b * t).view(b, t) % 16
    attn = torch.full((b, t, t), 1.0 / max(t, 1))
    return m(x, token_ids=ids, attn_probs=attn, generator=torch.Generator().manual_seed(0), step=1)


@pytest.mark.parametrize("name", available_routers())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", ["huge", "equal", "very_negative"])
@pytest.mark.parametrize("train", [True, False])
def test_extreme_logits_give_finite_routing_losses_and_gradients(name, dtype, case, train):
    m = MoE(D, E, 16, router=name, k=2, **OPTIONS.get(name, {})).to(dtype).train(train)
    set_logits(m.router, gate_weight(case))
    x = (1 + torch.rand(2, 6, D, generator=torch.Generator().manual_seed(2))).to(dtype).requires_grad_()
    out = run(m, x, dtype)
    r = out.routing
    if r.logits is not None:  # the case really is extreme
        logits = r.logits.detach().double()
        assert {"huge": logits.abs().max() > 1e4, "equal": (logits == 0).all(),
                "very_negative": logits.max() < -1e3}[case]
    assert torch.isfinite(r.probs).all() and torch.isfinite(r.weight).all()
    for aux_name, value in r.aux.items():
        assert torch.isfinite(value), aux_name
    assert torch.isfinite(out.y.float()).all()
    (out.y.float().sum() + out.aux_loss).backward()
    assert torch.isfinite(x.grad.float()).all()
    for param_name, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad.float()).all(), param_name


@pytest.mark.parametrize("name", available_routers())
def test_an_empty_batch_routes_nothing(name):
    m = MoE(D, E, 16, router=name, k=2, **OPTIONS.get(name, {}))
    for shape in ((0, 5, D), (2, 0, D)):
        x = torch.randn(shape, requires_grad=True)
        out = run(m, x, torch.float32)
        assert out.y.shape == shape and out.routing.num_pairs == 0
        (out.y.sum() + out.aux_loss).backward()


@pytest.mark.parametrize("name", ["topk", "deepseek"])
def test_a_bias_that_picks_underflowed_experts_gives_finite_weights(name):
    """Aux-loss-free bias may choose experts whose probabilities underflowed to 0: renormalising must not be 0/0."""
    m = MoE(D, E, 16, router=name, k=2, bias_rate=0.0)
    set_logits(m.router, torch.tensor([[1e3] * D, *[[-1e3] * D] * (E - 1)]))
    with torch.no_grad():
        m.router.expert_bias.copy_(torch.tensor([0.0, 0.0, 10.0, 10.0]))
    x = torch.ones(3, D, requires_grad=True)
    out = m(x)
    assert out.routing.expert.tolist() == [2, 3] * 3
    assert torch.isfinite(out.routing.weight).all() and torch.isfinite(out.y).all()
    out.y.sum().backward()
    assert torch.isfinite(x.grad).all()
