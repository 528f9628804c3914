"""Fixed shapes on the hot path (issue 17): candidate pairs with a `keep` mask and padded dispatch plans give what
the kept pairs alone give, and padding rows never reach an output or a gradient, whatever is in them."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoe import MoE
from smoe.dispatch import Dispatcher
from smoe.experts import Experts
from smoe.routing import RoutingContext, build_router
from smoe.routing.base import count
from tests.test_dispatch import routing_from, routings


@st.composite
def candidates(draw):
    """A routing whose pairs are candidates with a random `keep`, with priorities and sometimes routing groups."""
    r = draw(routings(with_priority=True))
    keep = torch.tensor(draw(st.lists(st.booleans(), min_size=r.num_pairs, max_size=r.num_pairs)), dtype=torch.bool)
    group = None
    if draw(st.booleans()):
        group = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=r.num_pairs, max_size=r.num_pairs)),
                             dtype=torch.long)
    return r.replace(group=group).select(keep)


@settings(max_examples=200, deadline=None)
@given(candidates(), st.sampled_from([None, 0.3, 1.0, 2.5]))
def test_a_plan_of_candidates_is_the_plan_of_the_kept_pairs(r, factor):
    d = Dispatcher(r.num_experts, capacity_factor=factor)
    plan, ref = d.plan(r), d.plan(r.replace(token=r.token))  # replace(per-pair field): the kept pairs only
    kept = r.pairs.keep.nonzero().flatten()
    assert torch.equal(kept[ref.pair], plan.pair)  # the same pairs in the same order
    assert torch.equal(plan.token, ref.token) and torch.equal(plan.weight, ref.weight)
    assert torch.equal(plan.counts, ref.counts) and torch.equal(plan.routed, ref.routed)
    assert plan.capacity == ref.capacity
    n = int(plan.counts.sum())
    assert plan.row_token.shape == (r.pairs.token.numel(),) and bool(plan.valid[:n].all())
    assert not bool(plan.valid[n:].any())


class _Garbage(torch.autograd.Function):
    """Identity on valid rows, NaN on padding rows, forward and backward: what an expert kernel may leave there."""

    @staticmethod
    def forward(ctx, rows, valid):
        ctx.valid = valid
        return rows.where(valid[:, None], math.nan)

    @staticmethod
    def backward(ctx, grad):
        return grad.where(ctx.valid[:, None], math.nan), None


def test_padding_rows_never_reach_outputs_or_gradients():
    r = routing_from([0, 0, 1, 1, 2, 2, 3], [0, 1, 0, 1, 0, 0, 1], 4, 2, priority=[3, 1, 4, 1, 5, 9, 2],
                     weight=[0.5, 2.0, 1.0, 3.0, 0.25, 4.0, 1.5])
    r = r.select(torch.tensor([True, True, False, True, True, True, True]))
    d = Dispatcher(2, capacity_factor=0.7)  # C = 3 of 6 kept pairs per expert: drops, and a candidate not kept
    plan = d.plan(r)
    assert not bool(plan.valid.all())
    w = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)

    def layer(x, plan, garbage):
        rows = d.dispatch(x, plan)
        rows = _Garbage.apply(rows, plan.valid) if garbage else rows
        return d.combine(rows @ w, plan, 4)

    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    y = layer(x, plan, garbage=True)
    y.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = layer(x_ref, plan.kept(), garbage=False)
    y_ref.square().sum().backward()
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)


def test_experts_ignore_rows_past_the_counts():
    for backend in ("grouped", "loop"):
        ex = Experts(3, 16, 32, bias=True, backend=backend)
        x = torch.randn(10, 16)
        counts = torch.tensor([2, 0, 5])  # rows 7..9 are padding
        torch.testing.assert_close(ex(x, counts)[:7], ex(x[:7], counts))


def test_count_is_a_bincount_of_fixed_size():
    index = torch.tensor([3, 0, 3, 1])
    assert count(index, 6).tolist() == [1, 1, 0, 2, 0, 0]
    assert count(index, 6, torch.tensor([True, False, False, True])).tolist() == [0, 1, 0, 1, 0, 0]


def test_candidates_read_as_the_kept_pairs():
    mask = torch.tensor([True, False, True])
    r = build_router("topk", d_model=4, num_experts=3, k=2)(torch.randn(3, 4), RoutingContext(mask=mask))
    assert r.pairs.token.tolist() == [0, 0, 1, 1, 2, 2]
    assert r.pairs.keep.tolist() == [True, True, False, False, True, True]
    assert r.token.tolist() == [0, 0, 2, 2] and r.num_pairs == 4
    assert r.experts_per_token().tolist() == [2, 0, 2]
    assert torch.equal(r.dense_weights()[1], torch.zeros(3))
    assert r.replace(aux={}).pairs.keep is r.pairs.keep  # a non-pair change keeps the candidates
    compact = r.replace(weight=r.weight * 2)  # a per-pair change: the kept pairs only
    assert compact.pairs.keep is None and torch.equal(compact.weight, r.weight * 2)


@pytest.mark.parametrize("router, options", [("expert_choice", {}), ("usmoe", {"pool": "batch"})])
def test_pooling_routers_with_padding_route_like_the_real_tokens_alone(router, options):
    r = build_router(router, d_model=4, num_experts=3, k=2, **options).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False, True, True, True, False, True])
    padded = r(x, RoutingContext(batch_shape=(10,), mask=mask))
    alone = r(x[mask], RoutingContext(batch_shape=(7,)))
    real = mask.nonzero().flatten()
    pairs = sorted(zip(padded.token.tolist(), padded.expert.tolist(), padded.weight.tolist()))
    assert pairs == sorted(zip(real[alone.token].tolist(), alone.expert.tolist(), alone.weight.tolist()))


def test_capacity_with_padding_is_the_capacity_of_the_real_pairs():
    m = MoE(8, 4, 16, k=2, capacity_factor=0.5, backend="grouped")
    x = torch.randn(2, 8, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 2:] = False
    out = m(x, mask)
    assert int(out.stats.capacity) == math.ceil(0.5 * 10 * 2 / 4)  # from the 10 real tokens' 20 pairs
    ref = m(x[mask][None])
    torch.testing.assert_close(out.y[mask], ref.y[0])
    assert torch.equal(out.stats.counts, ref.stats.counts)
