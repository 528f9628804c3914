import io

import pytest
import torch

from smoe import MoE, MoEStats
from smoe.routing import RoutingContext, build_router
from tests.conftest import set_gate


def stats(routed):
    routed = torch.tensor(routed)
    return MoEStats(counts=routed, routed=routed, dropped_fraction=torch.tensor(0.0), capacity=None)


@pytest.mark.parametrize("name", ["deepseek", "topk"])
def test_update_sums_the_micro_batches_of_a_step_by_hand(name):
    r = build_router(name, d_model=4, num_experts=4, bias_rate=0.01)
    r.after_step([stats([3, 1, 0, 4]), stats([1, 1, 2, 0])])
    # loads [4, 2, 2, 4], mean 3 -> sign(3 - load) = [-1, 1, 1, -1]
    # (one update per micro-batch would give [-1, 1, 1, -1] + [0, 0, -1, 1] = [-1, 1, 0, 0])
    assert torch.allclose(r.expert_bias, torch.tensor([-0.01, 0.01, 0.01, -0.01]))
    r.after_step([stats([2, 1, 3, 2])])
    # loads [2, 1, 3, 2], mean 2 -> [0, 1, -1, 0]: an expert at the mean keeps its bias
    assert torch.allclose(r.expert_bias, torch.tensor([-0.01, 0.02, 0.0, -0.01]))


def test_load_is_counted_before_capacity_drops():
    r = build_router("deepseek", d_model=4, num_experts=2, k=1, bias_rate=0.5)
    dropped = MoEStats(counts=torch.tensor([2, 2]), routed=torch.tensor([6, 2]), dropped_fraction=torch.tensor(0.5),
                       capacity=2)
    r.after_step([dropped])
    assert r.expert_bias.tolist() == [-0.5, 0.5]


def test_rate_zero_keeps_a_frozen_bias_and_none_has_no_bias():
    frozen = build_router("deepseek", d_model=4, num_experts=4, bias_rate=0.0)
    frozen.after_step([stats([9, 0, 0, 0])])
    assert torch.equal(frozen.expert_bias, torch.zeros(4)) and "expert_bias" in frozen.state_dict()
    off = build_router("topk", d_model=4, num_experts=4)
    assert off.expert_bias is None and "expert_bias" not in off.state_dict()
    off.after_step([stats([9, 0, 0, 0])])
    off.after_step(None)


def test_after_step_without_stats_is_an_error_when_balancing():
    r = build_router("deepseek", d_model=4, num_experts=4)
    for missing in (None, []):
        with pytest.raises(ValueError, match="needs this layer's MoEStats"):
            r.after_step(missing)


def test_moe_after_step_moves_the_router_bias_and_forward_does_not():
    m = MoE(8, 4, 16, router="deepseek", k=2)
    out = m(torch.randn(32, 8))
    assert torch.equal(m.router.expert_bias, torch.zeros(4))  # forward has no side effect
    m.after_step([out.stats])
    load = out.stats.routed.float()
    assert torch.equal(m.router.expert_bias, 0.001 * torch.sign(load.mean() - load))


def test_topk_bias_changes_the_choice_but_not_the_weight_by_hand():
    r = build_router("topk", d_model=3, num_experts=3, k=1, load_balance_coef=0.0, bias_rate=0.1).double()
    set_gate(r, torch.eye(3))
    x = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
    p = torch.softmax(x, -1)[0]  # [0.665, 0.090, 0.245]
    assert r(x, RoutingContext()).expert.tolist() == [0]
    r.expert_bias.copy_(torch.tensor([-0.5, 0.0, 0.0]))
    out = r(x, RoutingContext())
    # p + b = [0.165, 0.090, 0.245] -> expert 2, weight p_2 (not p_2 + b_2)
    assert out.expert.tolist() == [2] and torch.allclose(out.weight, p[2:])
    after = build_router("topk", d_model=3, num_experts=3, k=1, softmax="after", load_balance_coef=0.0,
                         bias_rate=0.1).double()
    set_gate(after, torch.eye(3))
    after.expert_bias.copy_(torch.tensor([-1.5, 0.0, 0.0]))
    # logits + b = [0.5, 0, 1] -> expert 2, weight p_2
    out = after(x, RoutingContext())
    assert out.expert.tolist() == [2] and torch.allclose(out.weight, p[2:])


def test_bias_survives_a_checkpoint_and_gives_the_same_routing():
    m = MoE(8, 4, 16, router="deepseek", k=2)
    x = torch.randn(64, 8)
    for _ in range(5):
        m.after_step([m(x).stats])
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = MoE(8, 4, 16, router="deepseek", k=2)
    fresh.load_state_dict(torch.load(buf))
    assert torch.equal(fresh.router.expert_bias, m.router.expert_bias) and m.router.expert_bias.abs().sum() > 0
    a, b = m(x), fresh(x)
    assert torch.equal(a.routing.expert, b.routing.expert) and torch.equal(a.y, b.y)


def test_bias_stays_float32_when_the_model_is_cast():
    m = MoE(8, 4, 16, router="deepseek", k=2)
    m.router.expert_bias.fill_(0.1234567)
    m.to(torch.bfloat16)
    assert m.router.gate.weight.dtype == torch.bfloat16 and m.router.expert_bias.dtype == torch.float32
    assert m.router.expert_bias[0].item() == torch.tensor(0.1234567).item()  # not rounded through bfloat16
    m.router.after_step([stats([5, 0, 0, 0])])
    assert torch.allclose(m.router.expert_bias, torch.tensor([0.1224567, 0.1244567, 0.1244567, 0.1244567]))
    assert m.double().router.expert_bias.dtype == torch.float32
