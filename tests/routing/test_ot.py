import math

import pytest
import torch

from smoe.routing.ot import balanced_plan, sinkhorn_plan

F64 = torch.float64


def plain_sinkhorn(score, eps, rows, cols, iters=5000):
    """Float64 reference in the plain domain: alternate scalings of K = exp(score / eps)."""
    kernel = torch.exp(score / eps)
    v = torch.ones(score.shape[1], dtype=F64)
    for _ in range(iters):
        u = rows / (kernel @ v)
        v = cols / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


def test_symmetric_2x2_by_hand():
    # doubly stochastic 2x2 plan [[a, 1-a], [1-a, a]]: cross ratio a^2 / (1-a)^2 = exp((.73+.73-.27-.27)/.5)
    # = exp(1.84) -> a / (1-a) = exp(0.92) -> a = sigmoid(0.92) = 1 / (1 + 0.398519) = 0.715042
    plan = sinkhorn_plan(torch.tensor([[0.73, 0.27], [0.27, 0.73]], dtype=F64), eps=0.5, tol=1e-12, max_iter=1000)
    a = 0.715042
    assert torch.allclose(plan, torch.tensor([[a, 1 - a], [1 - a, a]], dtype=F64), atol=1e-6)


def test_plan_rebalances_what_softmax_sends_to_one_expert():
    # C = [[3, 0], [1, 0]], eps 1: cross ratio exp(3 + 0 - 0 - 1) = e^2 -> a / (1 - a) = e -> a = e / (1 + e)
    score = torch.tensor([[3.0, 0.0], [1.0, 0.0]], dtype=F64)
    plan = sinkhorn_plan(score, eps=1.0, tol=1e-12, max_iter=1000)
    a = math.e / (1 + math.e)  # 0.731059
    assert torch.allclose(plan, torch.tensor([[a, 1 - a], [1 - a, a]], dtype=F64), atol=1e-9)
    assert plan.argmax(1).tolist() == [0, 1]  # balanced: token 1 goes to expert 1
    assert torch.softmax(score, 1).argmax(1).tolist() == [0, 0]  # greedy: both to expert 0


def test_separable_score_gives_uniform_plan_and_row_col_shifts_do_not_matter():
    a, b = torch.randn(4, 1, dtype=F64), torch.randn(1, 3, dtype=F64)
    plan = sinkhorn_plan(a + b, eps=0.7, tol=1e-12)  # rows 1, columns 4/3
    assert torch.allclose(plan, torch.full((4, 3), 1 / 3, dtype=F64), atol=1e-9)  # an expert bias buys no load
    score = torch.randn(4, 3, dtype=F64)
    ref = sinkhorn_plan(score, eps=0.7, tol=1e-12, max_iter=2000)
    assert torch.allclose(sinkhorn_plan(score + a + b, eps=0.7, tol=1e-12, max_iter=2000), ref, atol=1e-9)


def test_converged_marginals_and_plain_domain_reference():
    score = torch.randn(17, 5, dtype=F64)
    plan = sinkhorn_plan(score, eps=1.0, tol=1e-4)
    assert (plan.sum(1) - 1).abs().max() <= 1e-4
    assert (plan.sum(0) - 17 / 5).abs().max() <= 1e-4
    tight = sinkhorn_plan(score, eps=0.5, tol=1e-12, max_iter=5000)
    ref = plain_sinkhorn(score, 0.5, torch.ones(17, dtype=F64), torch.full((5,), 17 / 5, dtype=F64))
    assert torch.allclose(tight, ref, atol=1e-9)


def test_megatron_marginals_are_the_same_plan_rescaled():
    score = torch.randn(6, 3, dtype=F64)
    plan = sinkhorn_plan(score, row_mass=1 / 6, col_mass=1 / 3, tol=1e-9, max_iter=1000)
    assert torch.allclose(plan.sum(0), torch.full((3,), 1 / 3, dtype=F64), atol=1e-7)
    assert torch.allclose(plan.sum(1), torch.full((6,), 1 / 6, dtype=F64), atol=1e-9)
    assert torch.allclose(plan * 6, sinkhorn_plan(score, tol=1e-9, max_iter=1000), atol=1e-8)


def test_small_eps_approaches_the_exact_balanced_assignment():
    # BASE example: the best balanced assignment (2 tokens per expert) is {t0, t1} -> e0, {t2, t3} -> e1 (total 10);
    # greedy sends t0, t1, t2 to e0
    score = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [0.0, 1.0]], dtype=F64)
    plan = sinkhorn_plan(score, eps=0.1, tol=1e-10, max_iter=5000)
    assert plan.argmax(1).tolist() == [0, 0, 1, 1]
    assert score.argmax(1).tolist() == [0, 0, 0, 1]


def test_masked_rows_are_left_out():
    score = torch.randn(5, 3, dtype=F64)
    mask = torch.tensor([True, False, True, True, False])
    poisoned = score.clone()
    poisoned[~mask] = 1e4
    plan = sinkhorn_plan(poisoned, mask=mask, tol=1e-10, max_iter=1000)
    assert torch.all(plan[~mask] == 0)
    assert torch.allclose(plan[mask], sinkhorn_plan(score[mask], tol=1e-10, max_iter=1000))
    assert torch.allclose(plan.sum(0), torch.full((3,), 1.0, dtype=F64), atol=1e-9)  # 3 real tokens / 3 experts
    assert torch.equal(sinkhorn_plan(score, mask=torch.zeros(5, dtype=torch.bool)), torch.zeros(5, 3, dtype=F64))


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_extreme_scores_stay_finite_where_the_plain_domain_overflows(scale):
    score = torch.randn(8, 4, dtype=torch.float32) * scale
    assert not torch.isfinite(plain_sinkhorn(score.double(), 1.0, torch.ones(8, dtype=F64),
                                             torch.full((4,), 2.0, dtype=F64), iters=3)).all()
    plan = sinkhorn_plan(score)
    assert torch.isfinite(plan).all() and plan.dtype == torch.float32
    assert torch.allclose(plan.sum(0), torch.full((4,), 2.0), atol=1e-3)  # columns exact after each round


def test_bf16_and_single_token():
    plan = sinkhorn_plan(torch.randn(7, 3, dtype=torch.bfloat16))
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    one = sinkhorn_plan(torch.tensor([[4.0, -2.0, 1.0]]))
    assert torch.allclose(one, torch.full((1, 3), 1 / 3))  # one token, columns 1/3 each


def test_gradcheck_through_iterations():
    score = torch.randn(4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: sinkhorn_plan(s, eps=0.8, max_iter=30, tol=0.0), (score,))


def test_balanced_plan_costs_and_grad_switch():
    logits = torch.randn(6, 3, dtype=F64, requires_grad=True)
    on_logits = balanced_plan(logits, tol=1e-10, max_iter=1000)
    # cost = logits with eps 1: rows are softmax(logits + b) for one bias b per expert
    ratio = torch.log(on_logits / torch.softmax(logits, 1)).detach()  # = row constant + b_e
    b = ratio - ratio[:, :1]
    assert torch.allclose(b, b[:1].expand_as(b), atol=1e-7)
    on_probs = balanced_plan(logits, cost="probs", eps=0.05, tol=1e-10, max_iter=1000)
    assert torch.allclose(on_probs, sinkhorn_plan(torch.softmax(logits, 1), eps=0.05, tol=1e-10, max_iter=1000))
    assert on_logits.requires_grad and not balanced_plan(logits, grad=False).requires_grad


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 0.0}, "eps must be > 0"),
    ({"max_iter": 0}, "max_iter must be >= 1"),
    ({"tol": -1.0}, "tol must be >= 0"),
    ({"col_mass": 5.0}, "same total"),
    ({"row_mass": torch.ones(2)}, r"row_mass must be a scalar or have shape \(4,\)"),
    ({"col_mass": torch.tensor([1.0, -1.0, 4.0])}, "col_mass must be positive"),
    ({"mask": torch.ones(3, dtype=torch.bool)}, "mask must be a bool tensor of shape"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn_plan(torch.randn(4, 3), **kwargs)
    with pytest.raises(ValueError, match=r"score must have shape \(N, E\)"):
        sinkhorn_plan(torch.randn(4))
    with pytest.raises(ValueError, match="cost must be one of"):
        balanced_plan(torch.randn(4, 3), cost="euclid")
