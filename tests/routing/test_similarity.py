import pytest
import torch

from smoe.routing import RoutingContext, build_router
from smoe.routing.losses import load_balance_loss
from tests.conftest import set_gate

F64 = torch.float64
# hand case: d = 1, E = 2, one sequence x = [-0.25, 2], gate W = [[1], [-1]] -> logits (x, -x)
X = torch.tensor([[-0.25], [2.0]], dtype=F64)
W = [[1.0], [-1.0]]
# own P: token 0 softmax(-0.25, 0.25) = (sigmoid(-0.5), sigmoid(0.5)) = (0.377541, 0.622459) -> prefers expert 1
#        token 1 softmax(2, -2) = (sigmoid(4), sigmoid(-4)) = (0.982014, 0.017986)
P = torch.tensor([[0.3775406688, 0.6224593312], [0.9820137900, 0.0179862100]], dtype=F64)
# dot similarity x_i x_j / sqrt(1): [[0.0625, -0.5], [-0.5, 4]]
# S row 0 = softmax(0.0625, -0.5) = (sigmoid(0.5625), sigmoid(-0.5625)) = (0.637031, 0.362969)
# S row 1 = softmax(-0.5, 4) = (sigmoid(-4.5), sigmoid(4.5)) = (0.010987, 0.989013)
# P~ row 0 = 0.637031 * P0 + 0.362969 * P1 = (0.596946, 0.403054) -> token 0 flips to expert 0
# P~ row 1 = 0.010987 * P0 + 0.989013 * P1 = (0.975372, 0.024628)
P_MIXED = torch.tensor([[0.5969457974, 0.4030542026], [0.9753724785, 0.0246275215]], dtype=F64)


def make(**opts):
    opts = {"load_balance_coef": 0.0, **opts}
    r = build_router("similarity", d_model=opts.pop("d", 1), num_experts=opts.pop("e", 2), **opts).double()
    if r.gate.weight.shape == (2, 1):
        set_gate(r, W)
    return r


def test_similarity_mixing_by_hand_flips_token_choice():
    out = make(k=1)(X, RoutingContext(batch_shape=(1, 2)))
    assert torch.allclose(out.probs, P_MIXED, atol=1e-9, rtol=0)
    assert out.expert.tolist() == [0, 0]  # plain top-1 of P would give [1, 0]
    assert torch.allclose(out.weight, P_MIXED[:, 0], atol=1e-9, rtol=0)  # k = 1: raw P~, not renormalised
    assert torch.allclose(torch.softmax(out.logits, -1), P, atol=1e-9, rtol=0)


def test_causal_mask_by_hand():
    out = make(k=1)(X, RoutingContext(batch_shape=(1, 2), causal=True))
    # token 0 sees only itself: P~0 = P0; token 1 sees both: unchanged
    assert torch.allclose(out.probs, torch.stack([P[0], P_MIXED[1]]), atol=1e-9, rtol=0)
    assert out.expert.tolist() == [1, 0]


def test_partial_mix_and_topk_neighbours_by_hand():
    out = make(k=1, mix=0.5)(X, RoutingContext(batch_shape=(1, 2)))
    assert torch.allclose(out.probs, 0.5 * P + 0.5 * P_MIXED, atol=1e-9, rtol=0)
    sparse = make(k=1, neighbour_probs="topk")(X, RoutingContext(batch_shape=(1, 2)))
    # neighbours' top-1: P0 -> (0, 1), P1 -> (1, 0); row 0 = 0.637031 * (0, 1) + 0.362969 * (1, 0)
    assert torch.allclose(sparse.probs[0], torch.tensor([0.3629692055, 0.6370307945], dtype=F64), atol=1e-9, rtol=0)
    assert sparse.expert.tolist()[0] == 1


def test_identity_similarity_equals_topk_exactly():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 6, dtype=F64)
    topk = build_router("topk", d_model=6, num_experts=4, k=2).double()
    # cosine / 1e-6: every off-diagonal weight is exp(-(1 - cos) / 1e-6) = 0 exactly, so S = I
    sim = build_router("similarity", d_model=6, num_experts=4, k=2, similarity="cosine", temperature=1e-6).double()
    sim.gate.weight.data.copy_(topk.gate.weight.data)
    ctx = RoutingContext(batch_shape=(3, 5))
    a, b = topk(x.view(-1, 6), ctx), sim(x.view(-1, 6), ctx)
    for name in ("token", "expert", "weight", "probs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.aux["load_balance"], b.aux["load_balance"])
    # mix = 0 is the token's own distribution whatever the similarity
    own = build_router("similarity", d_model=6, num_experts=4, k=2, mix=0.0).double()
    own.gate.weight.data.copy_(topk.gate.weight.data)
    c = own(x.view(-1, 6), ctx)
    assert torch.equal(a.expert, c.expert) and torch.equal(a.weight, c.weight)


def test_bilinear_starts_as_dot():
    x = torch.randn(8, 3, dtype=F64)
    dot, bil = make(d=3, e=4, similarity="dot"), make(d=3, e=4, similarity="bilinear")
    bil.gate.weight.data.copy_(dot.gate.weight.data)
    ctx = RoutingContext(batch_shape=(2, 4))
    assert torch.allclose(dot(x, ctx).probs, bil(x, ctx).probs)
    assert bil.sim_proj.weight.requires_grad


@pytest.mark.parametrize("similarity", ["dot", "cosine", "bilinear"])
def test_causal_routing_ignores_later_tokens(similarity):
    r = make(d=4, e=4, k=2, similarity=similarity)
    x = torch.randn(2, 6, 4, dtype=F64)
    later = x.clone()
    later[:, 4:] = torch.randn(2, 2, 4, dtype=F64)
    ctx = RoutingContext(batch_shape=(2, 6), causal=True)
    a, b = r(x.view(-1, 4), ctx), r(later.view(-1, 4), ctx)
    early = torch.arange(12).view(2, 6)[:, :4].reshape(-1)
    assert torch.equal(a.dense_weights()[early], b.dense_weights()[early])
    # without the causal mask the early tokens do see the change (the test can fail)
    nc = RoutingContext(batch_shape=(2, 6))
    assert not torch.equal(r(x.view(-1, 4), nc).probs[early], r(later.view(-1, 4), nc).probs[early])


def test_padding_is_neither_routed_nor_mixed_in():
    r = make(d=4, e=4, k=2, load_balance_coef=1.0)
    x = torch.randn(2, 5, 4, dtype=F64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    changed = x.clone()
    changed[1, 3:] = 50.0
    ctx = RoutingContext(batch_shape=(2, 5), mask=mask.reshape(-1))
    a, b = r(x.view(-1, 4), ctx), r(changed.view(-1, 4), ctx)
    assert not {8, 9} & set(a.token.tolist())
    assert torch.equal(a.token, b.token) and torch.equal(a.expert, b.expert) and torch.equal(a.weight, b.weight)
    assert torch.equal(a.aux["load_balance"], b.aux["load_balance"])
    # the same real tokens in a batch without padding route identically
    short = r(x[1, :3], RoutingContext(batch_shape=(1, 3)))
    assert torch.allclose(a.dense_weights()[5:8], short.dense_weights())


def test_sequences_do_not_mix():
    r = make(d=4, e=4, k=2)
    x = torch.randn(2, 4, 4, dtype=F64)
    other = x.clone()
    other[1] = torch.randn(4, 4, dtype=F64)
    ctx = RoutingContext(batch_shape=(2, 4))
    assert torch.equal(r(x.view(-1, 4), ctx).probs[:4], r(other.view(-1, 4), ctx).probs[:4])


def test_balance_loss_on_mixed_or_own():
    x = torch.randn(6, 4, dtype=F64)
    ctx = RoutingContext(batch_shape=(1, 6))
    for balance_on in ("mixed", "own"):
        r = make(d=4, e=3, k=1, load_balance_coef=0.5, balance_on=balance_on)
        out = r(x, ctx)
        scored = out.probs if balance_on == "mixed" else torch.softmax(out.logits, -1)
        assert torch.allclose(out.aux["load_balance"], 0.5 * load_balance_loss(scored, out.expert))


def test_detach_graph_stops_gradient_through_similarity():
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    ctx = RoutingContext(batch_shape=(1, 5))
    grads = []
    for detach in (False, True):
        r = make(d=3, e=3, k=1, detach_graph=detach)
        with torch.no_grad():
            r.gate.weight.zero_()  # P is uniform: x reaches the weights only through S
            r.gate.weight[0, 0] = 1.0
        (g,) = torch.autograd.grad(r(x, ctx).weight.sum(), x)
        grads.append(g)
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("similarity", ["dot", "cosine", "bilinear"])
def test_gradcheck(similarity):
    r = make(d=3, e=3, k=2, similarity=similarity, temperature=0.7, mix=0.8, load_balance_coef=0.3, z_loss_coef=0.1)
    x = torch.randn(2, 3, 3, dtype=F64, requires_grad=True)

    def f(x):
        out = r(x.view(-1, 3), RoutingContext(batch_shape=(2, 3), causal=True))
        return out.weight, out.aux["load_balance"], out.aux["z_loss"]

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"similarity": "l2"}, "similarity must be one of"),
        ({"mix": 1.5}, "mix must be <= 1"),
        ({"neighbour_probs": "half"}, "neighbour_probs must be one of"),
        ({"balance_on": "both"}, "balance_on must be one of"),
        ({"detach_graph": "yes"}, "detach_graph must be True or False"),
        ({"k": 3}, "k=3 must be <= num_experts=2"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("similarity", d_model=2, num_experts=2, **opts)


def test_batch_shape_must_match():
    with pytest.raises(ValueError, match="does not hold"):
        make(d=1)(X, RoutingContext(batch_shape=(3,)))
