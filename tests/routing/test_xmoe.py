import pytest
import torch

from smoe import MoE
from smoe.routing import RoutingContext, build_router
from smoe.routing.losses import load_balance_loss

F64 = torch.float64
RELEASE = {"normalize_tokens": False, "temperature": None}


def make(d=2, e=2, **opts):
    """R = I and M = I (d = dim = E), so the projected token is the input itself."""
    r = build_router("xmoe", d_model=d, num_experts=e, dim=d, **opts).double()
    with torch.no_grad():
        r.proj.weight.copy_(torch.eye(d))
        r.expert_emb.copy_(torch.eye(e, d))
    return r


def test_scores_release_and_paper_readings_by_hand():
    x = torch.tensor([[3.0, 4.0]], dtype=F64)
    # release: s = z . m / |m| = (3, 4) -> softmax = (1 / (1 + e), e / (1 + e)) = (0.268941, 0.731059)
    out = make(k=1, **RELEASE)(x, RoutingContext())
    assert torch.allclose(out.probs, torch.tensor([[0.268941, 0.731059]], dtype=F64), atol=1e-6)
    # paper: cos = (0.6, 0.8); tau = 1 -> softmax(0.6, 0.8) = (0.450166, 0.549834)
    out = make(k=1, temperature=1.0)(x, RoutingContext())
    assert torch.allclose(out.probs, torch.tensor([[0.450166, 0.549834]], dtype=F64), atol=1e-6)
    # tau = 0.07 -> softmax(8.571429, 11.428571): 1 / (1 + e^2.857143) = 0.054313
    out = make(k=1)(x, RoutingContext())
    assert torch.allclose(out.probs, torch.tensor([[0.054313, 0.945687]], dtype=F64), atol=1e-6)
    assert out.expert.tolist() == [1] and torch.allclose(out.weight, out.probs[:, 1])  # k=1: raw G[e1]


def test_scores_bounded_by_inverse_temperature_and_invariant_to_token_norm():
    r = build_router("xmoe", d_model=6, num_experts=5, dim=4, temperature=0.2).double()
    x = torch.randn(40, 6, dtype=F64)
    s = r.scores(x)
    assert s.abs().max() <= 1 / 0.2 + 1e-12 and s.abs().max() > 0.5 / 0.2
    assert torch.allclose(r.scores(37.0 * x), s) and torch.allclose(r.scores(0.01 * x), s)
    release = build_router("xmoe", d_model=6, num_experts=5, dim=4, **RELEASE).double()
    assert not torch.allclose(release.scores(37.0 * x), release.scores(x))  # the release is not invariant


def test_temperature_floor_and_learnability():
    r = build_router("xmoe", d_model=4, num_experts=3).double()
    assert isinstance(r.temperature, torch.nn.Parameter) and float(r.temperature.detach()) == pytest.approx(0.07)
    with torch.no_grad():
        r.temperature.fill_(1e-7)
    assert r.scores(torch.randn(20, 4, dtype=F64)).abs().max() <= 1e4 + 1e-6  # floored at 1e-4
    fixed = build_router("xmoe", d_model=4, num_experts=3, learn_temperature=False)
    assert "temperature" in dict(fixed.named_buffers()) and "temperature" not in dict(fixed.named_parameters())
    assert build_router("xmoe", d_model=4, num_experts=3, temperature=None).temperature is None
    x = torch.randn(8, 4, dtype=F64)
    learn = build_router("xmoe", d_model=4, num_experts=3, temperature=0.5, second_expert="all").double()
    learn(x, RoutingContext()).weight.square().sum().backward()
    assert learn.temperature.grad is not None and learn.temperature.grad != 0


def test_expert_embeddings_rescaled_after_step_never_in_forward():
    r = build_router("xmoe", d_model=8, num_experts=4)
    assert torch.allclose(r.expert_emb.norm(dim=1), torch.full((4,), 1.5))  # as after the release's first forward
    with torch.no_grad():
        r.expert_emb.mul_(torch.tensor([[0.3], [2.0], [1.0], [7.0]]))
    before = r.expert_emb.detach().clone()
    x = torch.randn(10, 8)
    s = r.scores(x)
    r(x, RoutingContext())
    assert torch.equal(r.expert_emb, before)  # forward has no side effects
    m = MoE(8, 4, 16, router="xmoe")
    m.router.load_state_dict(r.state_dict())
    m.after_step()
    assert torch.allclose(m.router.expert_emb.norm(dim=1), torch.full((4,), 1.5), atol=1e-6)
    assert torch.allclose(m.router.scores(x), s, atol=1e-6)  # the scores only see m / |m|
    off = build_router("xmoe", d_model=8, num_experts=4, expert_norm=None, init_gain=0.32)
    assert torch.allclose(off.expert_emb.norm(dim=1), torch.full((4,), 0.32), atol=1e-6)


G = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)


def top2_router(**opts):
    return make(d=4, e=4, k=2, **RELEASE, **opts)  # x = log G gives G as the gate probabilities


def test_top2_weights_normalised_before_the_random_drop_by_hand():
    # G = (0.5, 0.3, 0.15, 0.05) -> g1 = 0.5 / 0.8 = 0.625, g2 = 0.3 / 0.8 = 0.375; second kept w.p. 2 g2 = 0.75
    r = top2_router()
    x = G.log().expand(2000, 4)
    out = r(x, RoutingContext(generator=torch.Generator().manual_seed(3)))
    u = torch.rand(2000, dtype=F64, generator=torch.Generator().manual_seed(3))
    second = out.experts_per_token() == 2
    assert torch.equal(second, u < 0.75)  # kept iff 2 g2 > u
    assert 0.72 < second.double().mean() < 0.78
    first = out.weight[torch.cat([torch.tensor([0]), out.experts_per_token().cumsum(0)[:-1]])]
    assert torch.allclose(first, torch.full((2000,), 0.625, dtype=F64))  # a dropped second leaves 0.625, not 1
    assert torch.allclose(out.weight[out.expert == 1], torch.tensor(0.375, dtype=F64))


def test_eval_second_expert_policies():
    x = torch.cat([G.log()[None], torch.tensor([[0.7, 0.1, 0.1, 0.1]], dtype=F64).log()])  # g2 0.375 and 0.125
    r = top2_router().eval()
    out = [r(x, RoutingContext(generator=torch.Generator().manual_seed(s))) for s in (0, 1)]
    assert out[0].experts_per_token().tolist() == [2, 1]  # threshold: keep iff 2 g2 > 1/2
    assert torch.equal(out[0].expert, out[1].expert)
    r.options.eval_second_expert = "all"
    assert r(x, RoutingContext()).experts_per_token().tolist() == [2, 2]
    r.options.eval_second_expert = "random"  # the release: draws in eval too
    kept = {tuple(r(x, RoutingContext(generator=torch.Generator().manual_seed(s))).experts_per_token().tolist())
            for s in range(20)}
    assert len(kept) > 1
    plain = top2_router(second_expert="all")
    assert plain.train()(x.repeat(25, 1), RoutingContext()).num_pairs == 100


def test_balance_loss_counts_first_choices_before_the_drop():
    r = build_router("xmoe", d_model=5, num_experts=3, load_balance_coef=0.5).double()
    x = torch.randn(12, 5, dtype=F64)
    mask = torch.rand(12) > 0.25
    out = r(x, RoutingContext(mask=mask))
    probs = out.probs
    first = probs.argmax(1)[mask]
    assert torch.allclose(out.aux["load_balance"], 0.5 * load_balance_loss(probs, first, mask))
    assert not set((~mask).nonzero().flatten().tolist()) & set(out.token.tolist())


def test_gradcheck_paper_and_release():
    x = torch.randn(6, 4, dtype=F64, requires_grad=True)
    for opts in ({"temperature": 0.5}, RELEASE):
        r = build_router("xmoe", d_model=4, num_experts=3, dim=3, **opts).double()

        def f(x, r=r):
            out = r(x, RoutingContext(generator=torch.Generator().manual_seed(0)))
            return out.weight, out.aux["load_balance"]

        assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("opts, match", [
    ({"dim": 0}, "dim must be >= 1"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"min_temperature": -1.0}, "min_temperature must be > 0"),
    ({"expert_norm": 0.0}, "expert_norm must be > 0"),
    ({"second_expert": "gumbel"}, "second_expert must be one of"),
    ({"eval_second_expert": "none"}, "eval_second_expert must be one of"),
    ({"k": 3}, "must be 'all' for k=3"),
    ({"normalize_tokens": 1}, "normalize_tokens must be True or False"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("xmoe", d_model=4, num_experts=4, **opts)


def test_k3_plain_topk_renormalised():
    r = build_router("xmoe", d_model=4, num_experts=4, k=3, second_expert="all", eval_second_expert="all").double()
    out = r(torch.randn(5, 4, dtype=F64), RoutingContext())
    assert out.num_pairs == 15 and torch.allclose(out.dense_weights().sum(1), torch.ones(5, dtype=F64))
    assert all(len(set(row)) == 3 for row in out.expert.view(5, 3).tolist())  # three distinct experts each


def release_capacity_router(**opts):
    return top2_router(second_expert="all", eval_second_expert="all", capacity="release", load_balance_coef=0.0,
                       **opts)


def pairs(routing):
    return sorted(zip(routing.token.tolist(), routing.expert.tolist()))


def test_release_capacity_by_hand():
    """torchscale top2gating: C = 2 ceil(S/E) in training, ceil(0.25 S) in eval; first choices fill the slots
    (in token order) before any second choice."""
    g = torch.tensor([[0.6, 0.3, 0.05, 0.05], [0.6, 0.3, 0.05, 0.05],  # tokens 0, 1: experts 0 then 1
                      [0.3, 0.6, 0.05, 0.05], [0.3, 0.6, 0.05, 0.05]], dtype=F64)  # tokens 2, 3: experts 1 then 0
    r = release_capacity_router()
    assert r.release_capacity(4) == 2  # 2 ceil(4 / 4)
    # expert 0: first choices of tokens 0, 1 fill it; expert 1: those of tokens 2, 3. Every second choice dropped
    # (pair order alone would have let tokens 0 and 1 take both slots of expert 1)
    assert pairs(r(g.log(), RoutingContext())) == [(0, 0), (1, 0), (2, 1), (3, 1)]
    r.eval()
    assert r.release_capacity(4) == 1  # ceil(0.25 * 4)
    assert pairs(r(g.log(), RoutingContext())) == [(0, 0), (2, 1)]
    r.options.eval_capacity_fraction = 0.0  # the training rule in eval too
    assert pairs(r(g.log(), RoutingContext())) == [(0, 0), (1, 0), (2, 1), (3, 1)]


def test_release_capacity_is_computed_before_the_random_drop_unlike_the_layers():
    # every token: expert 0 (g1 = 0.8 / 0.9), expert 1 (g2 = 0.1 / 0.9, 2 g2 < 1/2: dropped in eval)
    g = torch.tensor([0.8, 0.1, 0.05, 0.05], dtype=F64).log().expand(4, 4)
    release = release_capacity_router(eval_capacity_fraction=0.0).eval()
    release.options.eval_second_expert = "threshold"
    assert pairs(release(g, RoutingContext())) == [(0, 0), (1, 0)]  # C = 2 ceil(4 / 4) = 2, from S
    layer = MoE(4, 4, 8, router="xmoe", k=2, dim=4, capacity_factor=1.0, **RELEASE).double().eval()
    with torch.no_grad():
        layer.router.proj.weight.copy_(torch.eye(4))
        layer.router.expert_emb.copy_(torch.eye(4))
    out = layer(g.clone())
    assert out.stats.capacity == 1 and out.stats.counts.tolist() == [1, 0, 0, 0]  # C = ceil(1.0 * 4 pairs / 4)
