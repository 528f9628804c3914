import math

import pytest
import torch

from smoe import MoE
from smoe.routing import RoutingContext, build_router
from smoe.routing.ot import sinkhorn_plan
from tests.conftest import set_gate

F64 = torch.float64
X = torch.eye(2, dtype=F64)
W = torch.tensor([[3.0, 1.0], [0.0, 0.0]], dtype=F64)  # logits = X W^T = [[3, 0], [1, 0]] (notes 2.10, case 2)
A = math.e / (1 + math.e)  # plan = [[a, 1-a], [1-a, a]], a = e / (1 + e) = 0.731059


def make(name="sinkhorn", **opts):
    r = build_router(name, d_model=2, num_experts=2, tol=1e-12, max_iter=1000, **opts).double()
    set_gate(r, W)
    return r


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_plan_chooses_and_gate_weighs_top1_by_hand():
    r = make(k=1)
    out = r(X, RoutingContext())
    assert out.expert.tolist() == [0, 1]  # the plan sends token 1 to expert 1
    # Megatron k=1: weight = sigmoid(logit of the chosen expert): sigmoid(3) = 0.952574, sigmoid(0) = 0.5
    assert torch.allclose(out.weight, torch.tensor([sig(3.0), 0.5], dtype=F64))
    assert out.aux == {}
    ev = r.eval()(X, RoutingContext())
    assert ev.expert.tolist() == [0, 0]  # eval: greedy, no Sinkhorn
    assert torch.allclose(ev.weight, torch.tensor([sig(3.0), sig(1.0)], dtype=F64))
    assert r.train()(X, RoutingContext()).expert.tolist() == [0, 1]
    r.options.sinkhorn_in_eval = True
    assert r.eval()(X, RoutingContext()).expert.tolist() == [0, 1]


def test_plan_weights_by_hand():
    out = make(k=1, weights="plan")(X, RoutingContext())
    assert torch.allclose(out.weight, torch.tensor([A, A], dtype=F64))  # raw plan entries (rows sum to 1)
    out = make(k=2, weights="plan")(X, RoutingContext())  # k = E = 2: renormalised rows are the rows themselves
    assert torch.allclose(out.dense_weights(), torch.tensor([[A, 1 - A], [1 - A, A]], dtype=F64))


def test_gate_weights_for_k2_are_full_softmax_values_not_renormalised():
    r = build_router("sinkhorn", d_model=3, num_experts=4, k=2).double()
    x = torch.randn(9, 3, dtype=F64)
    out = r(x, RoutingContext())
    probs = torch.softmax(x @ r.gate.weight.T, -1)
    assert torch.allclose(out.weight, probs[out.token, out.expert])
    plan = sinkhorn_plan(x @ r.gate.weight.T)
    assert torch.equal(out.expert.view(9, 2), plan.topk(2, dim=-1).indices)


def test_training_load_is_balanced_where_softmax_collapses():
    r = build_router("sinkhorn", d_model=4, num_experts=4, k=1)
    with torch.no_grad():
        r.gate.weight.normal_()
        r.gate.weight[0] += 3.0
    x = torch.randn(256, 4).abs()  # every token prefers expert 0
    train = torch.bincount(r(x, RoutingContext()).expert, minlength=4)
    greedy = torch.bincount(r.eval()(x, RoutingContext()).expert, minlength=4)
    assert greedy[0] > 200
    assert int(train.max()) <= 1.25 * 64 and int(train.min()) >= 0.75 * 64


def test_masked_tokens_are_not_routed_and_not_in_the_pool():
    r = build_router("sinkhorn", d_model=3, num_experts=3, k=1).double()
    x = torch.randn(6, 3, dtype=F64)
    mask = torch.tensor([True, True, False, True, False, True])
    poisoned = x.clone()
    poisoned[~mask] = 50.0
    out = r(poisoned, RoutingContext(mask=mask))
    ref = r(x[mask], RoutingContext())
    assert torch.equal(out.token, mask.nonzero().flatten()[ref.token])
    assert torch.equal(out.expert, ref.expert) and torch.allclose(out.weight, ref.weight)


def test_gradcheck_through_the_plan():
    r = build_router("sinkhorn", d_model=3, num_experts=3, k=2, weights="plan", plan_grad=True,
                     max_iter=40, tol=0.0).double()
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: r(x, RoutingContext()).weight, (x,))
    no_grad = build_router("sinkhorn", d_model=3, num_experts=3, k=2, weights="plan").double()
    assert not no_grad(x, RoutingContext()).weight.requires_grad  # plan_grad=False: the plan is a constant


@pytest.mark.parametrize("opts, match", [
    ({"weights": "both"}, "weights must be one of"),
    ({"cost": "l2"}, "cost must be one of"),
    ({"eps": 0.0}, "eps must be > 0"),
    ({"max_iter": 0}, "max_iter must be >= 1"),
    ({"plan_grad": 1}, "plan_grad must be True or False"),
    ({"normalize": "no"}, "normalize must be"),
    ({"k": 5}, "k=5 must be <= num_experts=4"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("sinkhorn", d_model=2, num_experts=4, **opts)


def test_cost_probs_uses_its_own_eps_default():
    assert build_router("sinkhorn", d_model=2, num_experts=2, cost="probs").options.epsilon == 0.05
    assert build_router("sinkhorn", d_model=2, num_experts=2).options.epsilon == 1.0


def test_layer_with_capacity_runs():
    m = MoE(8, 4, 16, router="sinkhorn", k=2, capacity_factor=1.0)
    out = m(torch.randn(3, 5, 8))
    assert out.y.shape == (3, 5, 8) and int(out.stats.counts.max()) <= out.stats.capacity
