import pytest
import torch

from smoe.routing import RoutingContext, build_router
from tests.conftest import set_gate

X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
W = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # (E=3, d=2)
LOGITS = X @ W.T  # [[2,0,1],[0,1,1],[2,1,2]]


def make(**opts):
    r = build_router("topk", d_model=2, num_experts=3, **opts).double()
    set_gate(r, W)
    return r


def test_top2_softmax_before_normalized_by_hand():
    r = make(k=2, softmax="before", normalize=True, load_balance_coef=0.0)
    out = r(X, RoutingContext())
    p = torch.softmax(LOGITS, -1)
    assert torch.equal(out.token, torch.tensor([0, 0, 1, 1, 2, 2]))
    # token 0 -> experts 0 (2) and 2 (1); token 1 tie between 1 and 2; token 2 tie between 0 and 2
    assert out.expert[:2].tolist() == [0, 2]
    assert set(out.expert[2:4].tolist()) == {1, 2} and set(out.expert[4:].tolist()) == {0, 2}
    e = torch.exp(torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(out.weight[:2], torch.stack([e / (e + 1), 1 / (e + 1)]))
    assert torch.allclose(out.weight[2:4], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(out.probs, p)
    assert torch.equal(out.priority, torch.tensor([0.0, -1.0] * 3, dtype=torch.float64))


def test_switch_top1_keeps_raw_probability():
    r = make(k=1, load_balance_coef=0.0)
    out = r(X[:1], RoutingContext())
    p = torch.softmax(LOGITS[0], -1)
    assert out.expert.tolist() == [0] and torch.allclose(out.weight, p[:1])
    assert out.priority is None


def test_softmax_after_equals_before_with_normalize():
    x = torch.randn(20, 2, dtype=torch.float64)
    a = make(k=2, softmax="after")(x, RoutingContext())
    b = make(k=2, softmax="before", normalize=True)(x, RoutingContext())
    assert torch.equal(a.expert, b.expert) and torch.allclose(a.weight, b.weight)


def test_softmax_after_unnormalized_uses_full_softmax_values():
    out = make(k=2, softmax="after", normalize=False)(X[:1], RoutingContext())
    p = torch.softmax(LOGITS[0], -1)
    assert torch.allclose(out.weight, p[[0, 2]])


def test_aux_losses_by_hand():
    r = make(k=1, load_balance_coef=0.5, z_loss_coef=0.1)
    out = r(X[:2], RoutingContext())
    p = torch.softmax(LOGITS[:2], -1)
    f = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    f[out.expert[1]] += 0.5
    expected_lb = 3 * (f * p.mean(0)).sum()
    assert torch.allclose(out.aux["load_balance"], 0.5 * expected_lb)
    expected_z = (torch.logsumexp(LOGITS[:2], -1) ** 2).mean()
    assert torch.allclose(out.aux["z_loss"], 0.1 * expected_z)


def test_zero_coefficients_disable_losses():
    out = make(k=1, load_balance_coef=0.0, z_loss_coef=0.0)(X, RoutingContext())
    assert out.aux == {}


def test_masked_tokens_are_not_routed_and_not_in_losses():
    r = make(k=2, load_balance_coef=1.0, z_loss_coef=1.0)
    mask = torch.tensor([True, False, True])
    out = r(X, RoutingContext(mask=mask))
    assert 1 not in out.token.tolist() and out.num_pairs == 4
    ref = r(X[[0, 2]], RoutingContext())
    for name in ("load_balance", "z_loss"):
        assert torch.allclose(out.aux[name], ref.aux[name])


def test_noise_only_in_training_and_reproducible_with_generator():
    for noise in ("fixed", "learned"):
        r = make(k=1, noise=noise, noise_std=5.0)
        if noise == "learned":
            torch.nn.init.normal_(r.noise_gate.weight, std=3.0)
        x = torch.randn(64, 2, dtype=torch.float64)
        clean = r.eval()(x, RoutingContext())
        r.train()
        a = r(x, RoutingContext(generator=torch.Generator().manual_seed(1)))
        b = r(x, RoutingContext(generator=torch.Generator().manual_seed(1)))
        c = r(x, RoutingContext(generator=torch.Generator().manual_seed(2)))
        assert torch.equal(a.expert, b.expert) and torch.equal(a.weight, b.weight)
        assert not torch.equal(a.expert, c.expert)
        assert not torch.equal(a.expert, clean.expert)
        assert torch.equal(clean.expert, r.eval()(x, RoutingContext(generator=torch.Generator().manual_seed(3))).expert)


def test_learned_noise_std_is_softplus_of_noise_gate():
    r = make(k=1, noise="learned").train()
    with torch.no_grad():
        r.noise_gate.weight.fill_(0.0)  # softplus(0) = log 2
    x = X[:1]
    g = torch.Generator().manual_seed(0)
    eps = torch.randn((1, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noisy = r.noisy_logits(x, LOGITS[:1], RoutingContext(generator=g))
    assert torch.allclose(noisy, LOGITS[:1] + eps * torch.log(torch.tensor(2.0, dtype=torch.float64)))


def test_gradcheck_router_weights():
    r = make(k=2, load_balance_coef=0.3, z_loss_coef=0.2)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)

    def f(x):
        out = r(x, RoutingContext())
        return out.weight, out.aux["load_balance"], out.aux["z_loss"]

    assert torch.autograd.gradcheck(f, (x,))


def test_eval_k_routes_fewer_experts_in_eval_only():
    r = make(k=2, eval_k=1, load_balance_coef=0.0)
    x = torch.randn(6, 2, dtype=torch.float64)
    train = r.train()(x, RoutingContext())
    evaluated = r.eval()(x, RoutingContext())
    assert train.experts_per_token().tolist() == [2] * 6 and evaluated.experts_per_token().tolist() == [1] * 6
    assert torch.equal(evaluated.expert, train.expert.view(6, 2)[:, 0])  # the top-1 of the same scores
    assert torch.equal(evaluated.weight, torch.ones(6, dtype=torch.float64))  # k = 2 renormalises: 1 of 1
    assert make(k=2).eval()(x, RoutingContext()).experts_per_token().tolist() == [2] * 6  # default: eval_k = k


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"eval_k": 4}, "eval_k must be <= 3"),
        ({"eval_k": 0}, "eval_k must be >= 1"),
        ({"k": 4}, "k=4 must be <= num_experts=3"),
        ({"k": 0}, "k must be >= 1"),
        ({"softmax": "middle"}, "softmax must be one of"),
        ({"noise": "pink"}, "noise must be one of"),
        ({"noise_std": -1.0}, "noise_std must be >= 0"),
        ({"load_balance_coef": -0.1}, "load_balance_coef must be >= 0"),
        ({"normalize": "yes"}, "normalize must be"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("topk", d_model=2, num_experts=3, **opts)


def test_load_balance_counts_pairs_or_first_choices_by_hand():
    """Pairs (default): f = fraction of all k pairs; "first" (GShard, X-MoE): fraction of first choices."""
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    r = build_router("topk", d_model=3, num_experts=3, k=2, load_balance_coef=1.0).double()
    set_gate(r, torch.eye(3))
    ctx = RoutingContext()
    # choices: token 0 -> 0, 1; token 1 -> 1, 2. P = [0.3, 0.45, 0.25]
    # pairs: f = [1/4, 1/2, 1/4] -> 3 * (0.075 + 0.225 + 0.0625) = 1.0875 (HF Mixtral's loss is 2x: 2.175)
    assert torch.isclose(r(p.log(), ctx).aux["load_balance"], torch.tensor(1.0875, dtype=torch.float64))
    r.options.load_balance_counts = "first"
    # first choices: f = [1/2, 1/2, 0] -> 3 * (0.15 + 0.225) = 1.125
    assert torch.isclose(r(p.log(), ctx).aux["load_balance"], torch.tensor(1.125, dtype=torch.float64))
    mask = torch.tensor([True, False])  # padding never counts: token 0 alone, f = [1, 0, 0], P = [0.5, 0.3, 0.2]
    assert torch.isclose(r(p.log(), RoutingContext(mask=mask)).aux["load_balance"],
                         torch.tensor(1.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"load_balance_counts must be one of \['pairs', 'first'\]"):
        build_router("topk", d_model=3, num_experts=3, load_balance_counts="tokens")


def test_softmax_after_with_k1_keeps_the_full_softmax_probability():
    """A softmax over one chosen logit is the constant 1 (no gradient to the gate through the weight), so k = 1
    defaults to the chosen entry of the full softmax, like softmax="before"; normalize=True is the literal form."""
    x = X.clone().requires_grad_()
    after = make(k=1, softmax="after", load_balance_coef=0.0)
    out = after(x, RoutingContext())
    assert torch.allclose(out.weight, torch.softmax(LOGITS, -1).max(-1).values)
    assert torch.allclose(out.weight, make(k=1, load_balance_coef=0.0)(X, RoutingContext()).weight)
    out.weight.sum().backward()
    assert after.gate.weight.grad.abs().sum() > 0
    literal = make(k=1, softmax="after", normalize=True, load_balance_coef=0.0)
    out = literal(X, RoutingContext())
    assert torch.equal(out.weight, torch.ones(3, dtype=torch.float64))
    out.weight.sum().backward()
    assert literal.gate.weight.grad.abs().sum() == 0
