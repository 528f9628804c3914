import pytest
import torch

from smoe import MoE
from smoe.routing import RoutingContext, build_router
from tests.conftest import set_gate

F64 = torch.float64


def make(d=2, e=2, **opts):
    r = build_router("usmoe", d_model=d, num_experts=e, **opts).double()
    set_gate(r, torch.eye(e, d, dtype=F64))  # logits = x (d = E)
    return r


def pairs(routing):
    return {(int(t), int(e)) for t, e in zip(routing.token, routing.expert)}


def test_unified_score_and_global_budget_by_hand():
    # E = 2 so 2 / E = 1 and U = 0.5 softmax(H) + 0.5 sigmoid(H)
    # token 0, H = (3, 2): softmax (s(1), s(-1)) = (0.731059, 0.268941), sigmoid (0.952574, 0.880797)
    #   U0 = (0.841816, 0.574869)
    # token 1, H = (-1, -2): softmax (0.731059, 0.268941), sigmoid (0.268941, 0.119203) -> U1 = (0.5, 0.194072)
    # budget = N k = 2 of the 4 entries: 0.841816 (t0 e0), 0.574869 (t0 e1) beat 0.5 (t1 e0)
    x = torch.tensor([[3.0, 2.0], [-1.0, -2.0]], dtype=F64)
    out = make(k=1, pool="batch")(x, RoutingContext())
    assert out.token.tolist() == [0, 0] and out.expert.tolist() == [0, 1]
    assert torch.allclose(out.weight, torch.tensor([0.8418163527, 0.5748692497], dtype=F64), atol=1e-9, rtol=0)
    assert out.experts_per_token().tolist() == [2, 0]  # token 0 gets E experts, token 1 none
    expected_u = torch.tensor([[0.8418163527, 0.5748692497], [0.5, 0.1940721717]], dtype=F64)
    assert torch.allclose(out.probs, expected_u, atol=1e-9, rtol=0)
    assert out.aux == {}


def test_score_mix_endpoints():
    x = torch.randn(5, 4, dtype=F64)
    softmax_only = make(d=4, e=4, score_mix=0.0)(x, RoutingContext())
    assert torch.equal(softmax_only.probs, torch.softmax(x, -1))
    sigmoid_only = make(d=4, e=4, score_mix=1.0)(x, RoutingContext())
    assert torch.allclose(sigmoid_only.probs, torch.sigmoid(x) * 0.5)  # 2 / E = 0.5


def test_selects_exactly_the_token_choice_set_when_scores_separate():
    torch.manual_seed(0)
    n, e, k = 12, 6, 2
    high = torch.rand(n, e).argsort(1)[:, :k]  # each token's k preferred experts
    logits = torch.full((n, e), -4.0, dtype=F64) + 0.1 * torch.rand(n, e, dtype=F64)
    logits.scatter_(1, high, 4.0 + 0.1 * torch.rand(n, k, dtype=F64))
    r = make(d=e, e=e, k=k, pool="batch")
    u = r.unified_score(logits)
    top = u.topk(k + 1, dim=1).values
    assert top[:, k - 1].min() > top[:, k].max()  # every k-th best beats every (k+1)-th best
    out = r(logits, RoutingContext())
    topk = build_router("topk", d_model=e, num_experts=e, k=k).double()
    set_gate(topk, torch.eye(e, dtype=F64))
    assert pairs(out) == pairs(topk(logits, RoutingContext()))
    assert torch.equal(out.weight, u[out.token, out.expert])  # weights are U itself, not renormalised


def test_layer_output_for_tokens_with_zero_and_all_experts():
    m = MoE(2, 2, 8, router="usmoe", k=1, pool="batch").double()
    set_gate(m.router, torch.eye(2, dtype=F64))
    x = torch.tensor([[3.0, 2.0], [-1.0, -2.0]], dtype=F64)
    out = m(x)
    u = out.routing.probs
    assert torch.equal(out.y[1], torch.zeros(2, dtype=F64))  # no expert: output 0, the residual carries the token
    expected = u[0, 0] * m.experts.dense_forward(x[:1], 0) + u[0, 1] * m.experts.dense_forward(x[:1], 1)
    assert torch.allclose(out.y[:1], expected)


def test_pools_and_budgets():
    x = torch.randn(3, 4, 5, dtype=F64)  # B = 3 sequences of T = 4, E = 5, k = 2
    flat = x.view(-1, 5)
    for pool, groups in (("sequence", torch.arange(12).view(3, 4)), ("batch_position", torch.arange(12).view(3, 4).t()),
                         ("batch", torch.arange(12).view(1, 12))):
        out = make(d=5, e=5, k=2, pool=pool)(flat, RoutingContext(batch_shape=(3, 4)))
        per_token = out.experts_per_token()
        for g in groups:
            assert int(per_token[g].sum()) == 2 * g.numel(), pool
    auto = make(d=5, e=5, k=2)
    for causal, pool in ((True, "batch_position"), (False, "sequence")):
        ref = make(d=5, e=5, k=2, pool=pool)(flat, RoutingContext(batch_shape=(3, 4), causal=causal))
        got = auto(flat, RoutingContext(batch_shape=(3, 4), causal=causal))
        assert pairs(got) == pairs(ref)


def test_fractional_budget_rounds_half_to_even():
    x = torch.randn(5, 3, dtype=F64)
    # 0.5 * k * L = 0.5 * 1 * 5 = 2.5 -> 2 (half to even); 0.7 * 2 * 5 = 7
    assert make(d=3, e=3, k=1, budget_factor=0.5)(x, RoutingContext()).num_pairs == 2
    assert make(d=3, e=3, k=2, budget_factor=0.7)(x, RoutingContext()).num_pairs == 7
    assert make(d=3, e=3, k=1, budget_factor=3.0)(x, RoutingContext()).num_pairs == 15  # every pair


def test_masked_tokens_never_routed_and_not_counted_in_budget():
    x = torch.randn(2, 4, 3, dtype=F64)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    r = make(d=3, e=3, k=2, pool="sequence")
    out = r(x.view(-1, 3), RoutingContext(batch_shape=(2, 4), mask=mask.view(-1)))
    per_token = out.experts_per_token()
    assert per_token[~mask.view(-1)].sum() == 0
    assert int(per_token[:4].sum()) == 6 and int(per_token[4:].sum()) == 2
    changed = x.clone()
    changed[~mask] = 100.0
    again = r(changed.view(-1, 3), RoutingContext(batch_shape=(2, 4), mask=mask.view(-1)))
    assert torch.equal(out.token, again.token) and torch.equal(out.weight, again.weight)


def test_causal_pool_ignores_later_tokens():
    m = MoE(4, 4, 8, router="usmoe", k=2).double()
    x = torch.randn(3, 6, 4, dtype=F64)
    later = x.clone()
    later[:, 4:] = torch.randn(3, 2, 4, dtype=F64)
    def early_weights(out):
        return out.routing.dense_weights().view(3, 6, 4)[:, :4]

    a, b = m(x, causal=True), m(later, causal=True)
    assert torch.equal(early_weights(a), early_weights(b))
    assert torch.allclose(a.y[:, :4], b.y[:, :4])  # equal up to the expert GEMMs' row grouping
    # the sequence pool is not causal: the test can fail
    assert not torch.equal(early_weights(m(x, causal=False)), early_weights(m(later, causal=False)))


def test_ties_break_to_earlier_token_then_lower_expert():
    x = torch.zeros(3, 2, dtype=F64)  # every entry of U equals 0.5 * 0.5 + 0.5 * 0.5 = 0.5
    out = make(k=1, pool="batch")(x, RoutingContext())
    assert pairs(out) == {(0, 0), (0, 1), (1, 0)}


def test_gradcheck():
    r = build_router("usmoe", d_model=3, num_experts=4, k=2, pool="batch", budget_factor=0.75).double()
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: r(x, RoutingContext()).weight, (x,))


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"pool": "expert"}, "pool must be one of"),
        ({"score_mix": 1.5}, "score_mix must be <= 1"),
        ({"score_mix": -0.5}, "score_mix must be >= 0"),
        ({"budget_factor": 0.0}, "budget_factor must be > 0"),
        ({"budget_factor": 3.0}, "budget_factor must be <= 2"),
        ({"k": 5}, "k=5 must be <= num_experts=4"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("usmoe", d_model=2, num_experts=4, **opts)
