from dataclasses import replace

import pytest
import torch

from smoe import MoE, MoEConfig
from smoe.blocks import DenseFFN

F64 = torch.float64


def routed_and_dense_twins(m: MoE, n_shared: int, hidden: int) -> tuple[MoE, DenseFFN]:
    """The routed MoE and a dense SwiGLU FFN of hidden n_shared * hidden built from m's weights."""
    routed = MoE(replace(m.config, hidden=hidden, num_shared_experts=0, shared_gate=False)).double()
    routed.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("shared")})
    dense = DenseFFN(m.d_model, n_shared * hidden).double()
    with torch.no_grad():
        dense.w_in.weight.copy_(m.shared.w_in[0].t())
        dense.w_out.weight.copy_(m.shared.w_out[0].t())
    return routed, dense


@pytest.mark.parametrize("router", ["topk", "deepseek"])
def test_shared_moe_equals_dense_ffn_plus_routed_moe(router):
    m = MoE(8, 4, 12, router=router, k=2, num_shared_experts=2).double()
    routed, dense = routed_and_dense_twins(m, 2, 12)
    x = torch.randn(3, 5, 8, dtype=F64)
    out = m(x)
    assert torch.allclose(out.y, routed(x).y + dense(x))
    assert torch.equal(out.routing.expert, routed(x).routing.expert)


def test_shared_experts_are_the_sum_of_separate_experts():
    # one expert of hidden 2h == two experts of hidden h, added (hidden units concatenate)
    m = MoE(8, 4, 6, num_shared_experts=2).double()
    x = torch.randn(7, 8, dtype=F64)
    w_in, w_out = m.shared.w_in[0], m.shared.w_out[0]  # (d, 2 * 2h) = [gate | up], (2h, d)
    gate, up = w_in.chunk(2, dim=1)
    total = 0
    for half in (slice(0, 6), slice(6, 12)):
        total = total + (torch.nn.functional.silu(x @ gate[:, half]) * (x @ up[:, half])) @ w_out[half]
    assert torch.allclose(m.shared_output(x, None), total)


def test_sigmoid_gate_scales_the_shared_output():
    m = MoE(8, 4, 12, k=2, num_shared_experts=1, shared_gate=True).double()
    routed, dense = routed_and_dense_twins(m, 1, 12)
    x = torch.randn(10, 8, dtype=F64)
    gate = torch.sigmoid(x @ m.shared_gate.weight.t())  # (N, 1)
    assert torch.allclose(m(x).y, routed(x).y + gate * dense(x))


def test_padding_gets_zero_including_the_shared_output():
    m = MoE(8, 4, 12, num_shared_experts=1, shared_gate=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = m(torch.randn(2, 3, 8), mask)
    assert torch.all(out.y[~mask] == 0) and torch.all(out.y[mask].abs().sum(-1) > 0)


def test_gradcheck_through_shared_experts_and_gate():
    m = MoE(4, 3, 5, k=2, num_shared_experts=1, shared_gate=True, bias=True).double()
    x = torch.randn(6, 4, dtype=F64, requires_grad=True)
    params = [m.shared.w_in, m.shared.w_out, m.shared.b_in, m.shared_gate.weight]
    assert torch.autograd.gradcheck(lambda x, *p: m(x).y, (x, *params))


def test_empty_batch_and_config_round_trip():
    m = MoE(8, 4, 12, num_shared_experts=2, shared_gate=True)
    assert m(torch.zeros(0, 8)).y.shape == (0, 8)
    m2 = MoE(MoEConfig.from_dict(m.config.to_dict()))
    assert m2.config == m.config and m2.shared.hidden == 24 and m2.shared_gate is not None
    assert MoE(8, 4, 12).shared is None


@pytest.mark.parametrize("kwargs, match", [
    ({"num_shared_experts": -1}, "num_shared_experts must be >= 0"),
    ({"num_shared_experts": 1.5}, "num_shared_experts must be an int"),
    ({"shared_gate": True}, "True needs num_shared_experts >= 1"),
    ({"num_shared_experts": 1, "shared_gate": "yes"}, "shared_gate must be True or False"),
])
def test_bad_shared_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoE(8, 4, 12, **kwargs)
