import math

import pytest
import torch

from smoe import MoE
from smoe.routing import RoutingContext, build_router
from tests.conftest import set_gate

F64 = torch.float64


def pair(name, opts_a, other, opts_b, d=3, e=4):
    a = build_router(name, d_model=d, num_experts=e, **opts_a).double()
    b = build_router(other, d_model=d, num_experts=e, **opts_b).double()
    set_gate(b, a.gate.weight)
    return a, b


def same_routing(x, y):
    return torch.equal(x.token, y.token) and torch.equal(x.expert, y.expert) and torch.equal(x.weight, y.weight)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_p0_equals_its_base_router_topk(k):
    ssr, topk = pair("ssr", {"k": k, "p": 0.0}, "topk", {"k": k, "load_balance_coef": 0.0})
    x = torch.randn(11, 3, dtype=F64)
    mask = torch.rand(11) > 0.3
    for ctx in (RoutingContext(), RoutingContext(mask=mask)):
        a, b = ssr(x, ctx), topk(x, ctx)
        assert same_routing(a, b) and torch.equal(a.probs, b.probs) and a.aux == {}
        assert (a.priority is None and b.priority is None) or torch.equal(a.priority, b.priority)


@pytest.mark.parametrize("k", [1, 2])
def test_p1_equals_sinkhorn_routing_in_values_and_gradients(k):
    ssr, sk = pair("ssr", {"k": k, "p": 1.0}, "sinkhorn", {"k": k, "weights": "plan", "plan_grad": True})
    x = torch.randn(13, 3, dtype=F64)
    a, b = ssr(x, RoutingContext()), sk(x, RoutingContext())
    assert same_routing(a, b)
    ga = torch.autograd.grad(a.weight.square().sum(), ssr.gate.weight)[0]
    gb = torch.autograd.grad(b.weight.square().sum(), sk.gate.weight)[0]
    assert torch.equal(ga, gb) and ga.abs().sum() > 0  # gradient reaches the gate through the plan


def test_sinkhorn_branch_by_hand_and_eval_is_softmax():
    r = build_router("ssr", d_model=2, num_experts=2, k=1, p=1.0, tol=1e-12, max_iter=1000).double()
    set_gate(r, torch.tensor([[3.0, 1.0], [0.0, 0.0]]))  # logits [[3, 0], [1, 0]]
    out = r(torch.eye(2, dtype=F64), RoutingContext())
    a = math.e / (1 + math.e)  # plan [[a, 1-a], [1-a, a]] (notes 2.10, case 2)
    assert out.expert.tolist() == [0, 1] and torch.allclose(out.weight, torch.tensor([a, a], dtype=F64))
    ev = r.eval()(torch.eye(2, dtype=F64), RoutingContext())
    # eval: softmax top-1, raw probability: softmax(3, 0)[0] = 1 / (1 + e^-3), softmax(1, 0)[0] = 1 / (1 + e^-1)
    assert ev.expert.tolist() == [0, 0]
    assert torch.allclose(ev.weight, torch.tensor([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))], dtype=F64))


def test_eval_never_uses_sinkhorn_even_with_p1():
    ssr, topk = pair("ssr", {"k": 2, "p": 1.0}, "topk", {"k": 2, "load_balance_coef": 0.0})
    x = torch.randn(20, 3, dtype=F64)
    assert same_routing(ssr.eval()(x, RoutingContext()), topk.eval()(x, RoutingContext()))
    assert not same_routing(ssr.train()(x, RoutingContext()), topk(x, RoutingContext()))


def test_per_call_draws_come_from_the_generator():
    r = build_router("ssr", d_model=3, num_experts=4, p=0.3)
    fires = lambda seed: [r.selects_sinkhorn(RoutingContext(generator=g))  # noqa: E731
                          for g in [torch.Generator().manual_seed(seed)] for _ in range(2000)]
    a, b, c = fires(1), fires(1), fires(2)
    assert a == b and a != c
    assert 0.25 < sum(a) / len(a) < 0.35
    g = torch.Generator().manual_seed(5)
    expected = (torch.rand(50, generator=torch.Generator().manual_seed(5)) < 0.3).tolist()
    assert [r.selects_sinkhorn(RoutingContext(generator=g)) for _ in range(50)] == expected


def test_per_step_draws_depend_only_on_seed_and_step():
    layers = [build_router("ssr", d_model=3, num_experts=4, p=0.1, draw="step", seed=7) for _ in range(2)]
    other = build_router("ssr", d_model=3, num_experts=4, p=0.1, draw="step", seed=8)
    steps = [[r.selects_sinkhorn(RoutingContext(step=s)) for s in range(3000)] for r in (*layers, other)]
    assert steps[0] == steps[1] and steps[0] != steps[2]  # same seed: layers fire together
    assert 0.08 < sum(steps[0]) / 3000 < 0.12
    with pytest.raises(ValueError, match="needs the training step"):
        layers[0].selects_sinkhorn(RoutingContext())


def test_branch_switches_with_the_draw_in_a_layer():
    m = MoE(6, 4, 8, router="ssr", k=2, p=0.5)
    x = torch.randn(32, 6)
    outs = [m(x, generator=torch.Generator().manual_seed(s)).routing for s in range(12)]
    fired = [m.router.selects_sinkhorn(RoutingContext(generator=torch.Generator().manual_seed(s))) for s in range(12)]
    assert 0 < sum(fired) < 12
    softmax = m.eval()(x).routing
    for out, f in zip(outs, fired):
        assert same_routing(out, softmax) != f


@pytest.mark.parametrize("opts, match", [
    ({"p": 1.5}, "p must be <= 1"),
    ({"p": -0.1}, "p must be >= 0"),
    ({"draw": "token"}, "draw must be one of"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"cost": "l1"}, "cost must be one of"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("ssr", d_model=2, num_experts=4, **opts)
