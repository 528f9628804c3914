"""Extreme logits, bf16 input and a single token give finite outputs, losses and gradients (every router)."""

import pytest
import torch

from smoe import MoE

ROUTERS = {
    "xmoe": {},
    "xmoe-release": {"router": "xmoe", "normalize_tokens": False, "temperature": None},
    "vmoe": {},
    "sinkhorn": {},
    "sinkhorn-plan": {"router": "sinkhorn", "weights": "plan", "plan_grad": True},
    "ssr": {"p": 1.0},
}


def layer(name, **kwargs):
    opts = dict(ROUTERS[name])
    return MoE(8, 4, 16, router=opts.pop("router", name), k=2, **opts, **kwargs)


def check_finite_step(m, x, mask=None):
    out = m(x, mask, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.y.float()).all() and torch.isfinite(out.aux_loss)
    assert torch.isfinite(out.routing.weight).all()
    (out.y.float().sum() + out.aux_loss).backward()
    for p in m.parameters():
        assert p.grad is None or torch.isfinite(p.grad.float()).all()
    return out


@pytest.mark.parametrize("name", list(ROUTERS))
@pytest.mark.parametrize("train", [True, False])
def test_extreme_logits(name, train):
    m = layer(name).train(train)
    with torch.no_grad():
        gate = m.router.proj if hasattr(m.router, "proj") else m.router.gate
        gate.weight.copy_(torch.randn_like(gate.weight).sign() * 1e3)
    x = torch.randn(2, 6, 8).sign() * 10.0  # logits of order +-1e4 (1e3 * 10 summed over 8 inputs)
    out = check_finite_step(m, x)
    assert out.routing.logits.abs().max() > 1e3 or name.startswith("xmoe")


@pytest.mark.parametrize("name", list(ROUTERS))
def test_bf16_input(name):
    m = layer(name).to(torch.bfloat16)
    out = check_finite_step(m, torch.randn(3, 5, 8, dtype=torch.bfloat16, requires_grad=True))
    assert out.y.dtype == torch.bfloat16 and out.routing.probs.dtype == torch.float32


@pytest.mark.parametrize("name", list(ROUTERS))
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_single_token_and_all_but_one_masked(name, capacity_factor):
    check_finite_step(layer(name, capacity_factor=capacity_factor), torch.randn(1, 8))
    mask = torch.tensor([[False, True, False, False]])
    out = check_finite_step(layer(name, capacity_factor=capacity_factor), torch.randn(1, 4, 8), mask)
    assert set(out.routing.token.tolist()) <= {1}
