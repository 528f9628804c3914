import pytest
import torch

from smoe.integrations.swap import swap_router
from smoe.models import LM, LMConfig
from smoe.routing.usmoe import USMoEOptions


def tiny_lm(**kw):
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=50, max_len=16, d_model=16, num_layers=2, num_heads=2, ffn_hidden=32,
                   moe={"num_experts": 4, "router_options": {"k": 2}}, **kw)
    return LM(cfg).eval()


def test_swapping_topk_for_topk_keeps_the_outputs():
    model = tiny_lm()
    x = torch.randint(0, 50, (2, 8))
    before = model(x).logits
    report = swap_router(model, "topk")
    assert len(report.layers) == 2 and report.reused_gate == report.layers
    assert torch.equal(model(x).logits, before)


def test_usmoe_swap_reuses_the_gate_and_changes_routing_by_definition():
    model = tiny_lm()
    gates = [m.router.gate.weight.detach().clone() for m in model.moe_layers()]
    swap_router(model, "usmoe", pool="sequence")
    x = torch.randint(0, 50, (2, 8))
    out = model(x)
    for moe, gate, layer_out in zip(model.moe_layers(), gates, out.moe):
        assert moe.config.router == "usmoe" and moe.config.router_options == USMoEOptions(pool="sequence")
        assert torch.equal(moe.router.gate.weight, gate)
        r = layer_out.routing
        assert r.num_pairs == 2 * 8 * 2  # budget: T * k per sequence
        assert int(r.experts_per_token().max()) >= 2


def test_swap_without_a_matching_gate_still_swaps():
    model = tiny_lm()
    report = swap_router(model, "xmoe")  # X-MoE scores in a low-dim space: no (E, d) gate to carry over
    assert len(report.layers) == 2 and report.reused_gate == []


def test_swap_errors():
    with pytest.raises(ValueError, match="unknown router"):
        swap_router(tiny_lm(), "nope")
    with pytest.raises(ValueError, match="no supported sparse-MoE block"):
        swap_router(torch.nn.Linear(2, 2), "topk")
