import pytest
import torch

from smoe import MoE
from smoe.routing import RoutingContext, build_router
from tests.conftest import set_gate


def make(**opts):
    r = build_router("expert_choice", d_model=2, num_experts=2, **opts).double()
    set_gate(r, [[1.0, 0.0], [0.0, 1.0]])
    return r


def test_each_expert_takes_its_top_c_tokens_by_hand():
    x = torch.tensor([[3.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    out = make(k=1, capacity_factor=1.0)(x, RoutingContext())  # C = 1 * 4 * 1 / 2 = 2
    p = torch.softmax(x, -1)
    got = {(int(t), int(e)) for t, e in zip(out.token, out.expert)}
    # expert 0 scores p[:,0] = high for tokens 0, 1; expert 1 prefers tokens 2 then 3 (tie 0.5 vs p[1,1])
    assert got == {(0, 0), (1, 0), (2, 1), (3, 1)}
    dense = out.dense_weights()
    assert torch.allclose(dense[dense > 0], p[dense > 0])


def test_capacity_formula_and_variable_experts_per_token():
    r = make(k=2, capacity_factor=0.5)
    assert r.capacity(10) == 5  # 0.5 * 10 * 2 / 2
    assert r.capacity(3) == 2  # ceil(1.5)
    out = r(torch.randn(10, 2, dtype=torch.float64), RoutingContext())
    counts = torch.bincount(out.expert, minlength=2)
    assert counts.tolist() == [5, 5]
    per_token = out.experts_per_token()
    assert per_token.sum() == 10 and per_token.min() >= 0 and per_token.max() <= 2


def test_masked_tokens_never_chosen():
    x = torch.randn(6, 2, dtype=torch.float64)
    mask = torch.tensor([True, False, True, False, True, True])
    out = make(k=1, capacity_factor=1.0)(x, RoutingContext(mask=mask))
    assert not set(out.token.tolist()) & {1, 3}
    assert out.num_pairs == 2 * 2  # C = ceil(4 real * 1 / 2)


def test_moe_passes_capacity_factor_to_expert_choice_and_stays_dropless():
    m = MoE(8, 4, 16, router="expert_choice", k=1, capacity_factor=2.0)
    assert m.router.capacity_factor == 2.0 and m.dispatcher.capacity_factor is None
    out = m(torch.randn(16, 8))
    assert out.stats.counts.tolist() == [8, 8, 8, 8] and float(out.stats.dropped_fraction) == 0.0


def test_bad_capacity_factor():
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        build_router("expert_choice", d_model=2, num_experts=2, capacity_factor=0.0)
