import math

import pytest
import torch

from smoe import MoE
from smoe.dispatch import Dispatcher
from smoe.routing import RoutingContext, build_router
from smoe.routing.losses import importance_loss, noisy_load_loss
from tests.conftest import set_gate

F64 = torch.float64
# dispatch probabilities of 3 tokens over 3 experts; x_t = one-hot t and W = log(P)^T give logits log P
P = torch.tensor([[0.40, 0.25, 0.35], [0.50, 0.10, 0.40], [0.30, 0.10, 0.60]], dtype=F64)


def make(**opts):
    r = build_router("vmoe", d_model=3, num_experts=3, **opts).double()
    set_gate(r, P.log().T)
    return r


def kept(routing, capacity_factor=1.0):
    plan = Dispatcher(routing.num_experts, capacity_factor=capacity_factor).plan(routing)
    return sorted((int(routing.token[a]), int(routing.expert[a]), round(float(routing.weight[a].detach()), 6))
                  for a in plan.pair)


def test_top2_probabilities_are_weights_without_renormalisation():
    out = make(k=2).eval()(torch.eye(3, dtype=F64), RoutingContext())
    assert torch.allclose(out.probs, P)
    assert out.expert.tolist() == [0, 2, 0, 2, 2, 0]
    assert torch.allclose(out.weight, torch.tensor([0.40, 0.35, 0.50, 0.40, 0.60, 0.30], dtype=F64))


def test_bpr_keeps_high_priority_tokens_vanilla_keeps_early_ones_by_hand():
    # capacity ceil(1.0 * 6 / 3) = 2 per expert; first choices: t0 -> e0 (.40), t1 -> e0 (.50), t2 -> e2 (.60)
    # vanilla, order t0, t1, t2: round 1 fills e0 with t0, t1 and e2 with t2; round 2: t0 -> e2 (slot 1),
    #   t1 -> e2 full, t2 -> e0 full
    # BPR, order by top-1 weight t2 (.6), t1 (.5), t0 (.4): round 1 as before (e0: t1, t0; e2: t2);
    #   round 2: t2 -> e0 full, t1 -> e2 (slot 1), t0 -> e2 full
    x = torch.eye(3, dtype=F64)
    vanilla = make(k=2, batch_priority="never").eval()(x, RoutingContext())
    bpr = make(k=2, batch_priority="eval").eval()(x, RoutingContext())
    assert kept(vanilla) == [(0, 0, 0.40), (0, 2, 0.35), (1, 0, 0.50), (2, 2, 0.60)]
    assert kept(bpr) == [(0, 0, 0.40), (1, 0, 0.50), (1, 2, 0.40), (2, 2, 0.60)]


def test_bpr_through_the_layer_drops_weights_without_renormalising():
    m = MoE(3, 3, 4, router="vmoe", k=2, capacity_factor=1.0).double().eval()
    set_gate(m.router, P.log().T)
    x = torch.eye(3, dtype=F64)
    out = m(x)
    f = [m.experts.dense_forward(x, e) for e in range(3)]
    expected = torch.stack([0.40 * f[0][0], 0.50 * f[0][1] + 0.40 * f[2][1], 0.60 * f[2][2]])
    assert torch.allclose(out.y, expected)
    assert out.stats.capacity == 2 and math.isclose(float(out.stats.dropped_fraction), 2 / 6, rel_tol=1e-6)


def test_bpr_only_in_eval_by_default_and_switchable():
    r = make(k=2, noise_std=0.0)
    x = torch.eye(3, dtype=F64)
    vanilla = make(k=2, noise_std=0.0, batch_priority="never")
    assert kept(r.train()(x, RoutingContext())) == kept(vanilla(x, RoutingContext()))
    r.options.batch_priority = "always"
    assert kept(r.train()(x, RoutingContext())) == kept(r.eval()(x, RoutingContext()))


def reference_kept(top1, expert, capacity, bpr):
    """Python loop over one round of k=1 choices: each expert takes tokens in priority order until full."""
    order = sorted(range(len(expert)), key=lambda t: (-top1[t], t)) if bpr else range(len(expert))
    fill, keep = {}, set()
    for t in order:
        if fill.get(expert[t], 0) < capacity:
            fill[expert[t]] = fill.get(expert[t], 0) + 1
            keep.add(t)
    return keep


@pytest.mark.parametrize("factor", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_small_capacity_bpr_keeps_the_most_confident_tokens(factor):
    m = MoE(8, 4, 16, router="vmoe", k=1, capacity_factor=factor, batch_priority="eval").eval()
    x = torch.randn(64, 8) * 3
    out = m(x)
    probs = out.routing.probs
    top1, expert = probs.max(1)
    plan = m.dispatcher.plan(out.routing)
    cap = math.ceil(factor * 64 / 4)
    assert set(plan.token.tolist()) == reference_kept(top1.tolist(), expert.tolist(), cap, bpr=True)
    m.router.options.batch_priority = "never"
    plan_vanilla = m.dispatcher.plan(m(x).routing)
    assert set(plan_vanilla.token.tolist()) == reference_kept(top1.tolist(), expert.tolist(), cap, bpr=False)
    if factor < 1:
        assert top1[plan.token].mean() > top1[plan_vanilla.token].mean()


def test_eval_capacity_sweep_on_a_trained_layer():
    m = MoE(8, 4, 16, router="vmoe", k=2).eval()  # trained dropless
    x = torch.randn(2, 40, 8)
    assert m(x).stats.capacity is None
    dropped = []
    for factor in (0.1, 0.5, 1.0, 4.0):
        m.dispatcher.capacity_factor = factor
        out = m(x)
        assert out.stats.capacity == math.ceil(factor * 160 / 4)
        dropped.append(float(out.stats.dropped_fraction))
    assert dropped == sorted(dropped, reverse=True) and dropped[0] > 0.8 and dropped[-1] == 0


def test_noise_std_is_divided_by_the_number_of_experts():
    r = build_router("vmoe", d_model=3, num_experts=4, noise_std=2.0).double()
    x = torch.randn(5, 3, dtype=F64)
    logits = x @ r.gate.weight.T
    eps = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(11))
    out = r(x, RoutingContext(generator=torch.Generator().manual_seed(11)))
    assert torch.allclose(out.probs, torch.softmax(logits + 0.5 * eps, -1))  # sigma = 2 / 4
    assert torch.allclose(out.logits, logits)


def test_eval_is_deterministic_and_has_no_load_loss_train_importance_is_clean():
    r = build_router("vmoe", d_model=3, num_experts=4).double()
    x = torch.randn(30, 3, dtype=F64)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    ev = [r.eval()(x, RoutingContext(generator=g)) for g in gens]
    assert torch.equal(ev[0].weight, ev[1].weight) and set(ev[0].aux) == {"importance"}
    tr = [r.train()(x, RoutingContext(generator=torch.Generator().manual_seed(s))) for s in (1, 2)]
    assert not torch.equal(tr[0].probs, tr[1].probs) and set(tr[0].aux) == {"importance", "load"}
    assert torch.equal(tr[0].aux["importance"], tr[1].aux["importance"])
    clean = torch.softmax(x @ r.gate.weight.T, -1)
    assert torch.allclose(tr[0].aux["importance"], 0.005 * importance_loss(clean))


def test_load_loss_toy_by_hand():
    # E=2, k=1, sigma=1. Token A: clean (0, 0), noisy (1, -1) -> eta = 1, p = Phi(-1) = 0.158655 for both experts.
    # Token B: clean (2, 0), noisy (2, 0) -> eta = 2, p = (Phi(0), Phi(-2)) = (0.5, 0.022750).
    # load = (0.329328, 0.090703), mean 0.210015, pop. var 0.014235 -> CV^2 = 0.322753
    clean = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=F64)
    noisy = torch.tensor([[1.0, -1.0], [2.0, 0.0]], dtype=F64)
    assert math.isclose(float(noisy_load_loss(clean, noisy, 1.0, 1)), 0.322753, abs_tol=2e-6)


def test_load_loss_official_vector():
    clean = torch.tensor([[0.9, 0.06, 0.04], [0.7, 0.18, 0.12], [0.85, 0.05, 0.1]], dtype=F64)
    noise = torch.tensor([[-0.037, 0.026, -0.018], [-0.074, 0.045, -0.015], [-0.067, -0.059, 0.073]], dtype=F64)
    # load = (0.99999966, 0.27771, 0.23410) -> CV^2 = 0.4857385 (notes, V2; recomputed independently there)
    assert math.isclose(float(noisy_load_loss(clean, clean + noise, 0.1, 2)), 0.4857385, abs_tol=1e-6)


def test_groups_make_capacity_priority_and_losses_per_group():
    r = build_router("vmoe", d_model=4, num_experts=2, k=1, group_size=6).double().eval()
    x = torch.randn(12, 4, dtype=F64)
    whole = r(x, RoutingContext())
    assert torch.equal(whole.group, torch.arange(12) // 6)
    parts = [r(x[i:i + 6], RoutingContext()) for i in (0, 6)]
    expected = sum(p.aux["importance"] for p in parts) / 2
    assert torch.allclose(whole.aux["importance"], expected)
    d = Dispatcher(2, capacity_factor=0.5)  # per group: ceil(0.5 * 6 / 2) = 2 per expert
    plan = d.plan(whole)
    per_group = [set((d.plan(p).token + i).tolist()) for p, i in zip(parts, (0, 6))]
    assert set(plan.token.tolist()) == per_group[0] | per_group[1] and plan.capacity == 2
    r.train()
    noisy = r(x, RoutingContext(generator=torch.Generator().manual_seed(0)))
    logits = x @ r.gate.weight.T
    scores = logits + 0.5 * torch.randn(12, 2, dtype=F64, generator=torch.Generator().manual_seed(0))  # sigma 1/2
    parts = [noisy_load_loss(logits[i:i + 6], scores[i:i + 6], 0.5, 1) for i in (0, 6)]
    assert torch.allclose(noisy.aux["load"], 0.005 * (parts[0] + parts[1]) / 2)


def test_masked_tokens_not_routed_and_out_of_losses():
    r = build_router("vmoe", d_model=3, num_experts=4, k=2).double()
    x = torch.randn(8, 3, dtype=F64)
    mask = torch.tensor([True, False, True, True, False, True, True, True])
    out = r(x, RoutingContext(mask=mask, generator=torch.Generator().manual_seed(4)))
    assert not {1, 4} & set(out.token.tolist())
    clean = torch.softmax(x @ r.gate.weight.T, -1)
    assert torch.allclose(out.aux["importance"], 0.005 * importance_loss(clean[mask]))


def test_gradcheck_weights_and_losses():
    r = build_router("vmoe", d_model=3, num_experts=4, k=2, group_size=3).double()
    x = torch.randn(7, 3, dtype=F64, requires_grad=True)

    def f(x):
        out = r(x, RoutingContext(generator=torch.Generator().manual_seed(0)))
        return out.weight, out.aux["importance"], out.aux["load"]

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("opts, match", [
    ({"noise_std": -1.0}, "noise_std must be >= 0"),
    ({"batch_priority": "train"}, "batch_priority must be one of"),
    ({"group_size": 0}, "group_size must be >= 1"),
    ({"importance_coef": -1.0}, "importance_coef must be >= 0"),
    ({"k": 9}, "k=9 must be <= num_experts=8"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("vmoe", d_model=2, num_experts=8, **opts)
