import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoe.dispatch import Dispatcher
from smoe.routing import Routing


def routing_from(token, expert, num_tokens, num_experts, priority=None, weight=None):
    token, expert = torch.as_tensor(token, dtype=torch.long), torch.as_tensor(expert, dtype=torch.long)
    weight = torch.ones(len(token), dtype=torch.float64) if weight is None else torch.as_tensor(weight)
    return Routing(token=token, expert=expert, weight=weight,
                   probs=torch.zeros(num_tokens, num_experts), num_experts=num_experts,
                   priority=None if priority is None else torch.as_tensor(priority, dtype=torch.float64))


@st.composite
def routings(draw, with_priority=False):
    e = draw(st.integers(1, 6))
    n = draw(st.integers(0, 20))
    a = draw(st.integers(0, 3 * n))
    token = draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=a, max_size=a)) if n else []
    expert = draw(st.lists(st.integers(0, e - 1), min_size=len(token), max_size=len(token)))
    prio = draw(st.lists(st.floats(-5, 5), min_size=len(token), max_size=len(token))) if with_priority else None
    return routing_from(token, expert, n, e, prio)


@settings(max_examples=200, deadline=None)
@given(routings())
def test_dropless_keeps_every_pair_grouped_by_expert(r):
    plan = Dispatcher(r.num_experts).plan(r)
    assert sorted(plan.pair.tolist()) == list(range(r.num_pairs))
    assert plan.counts.sum() == r.num_pairs and float(plan.dropped_fraction) == 0.0
    grouped_experts = r.expert[plan.pair]
    assert torch.equal(grouped_experts, torch.sort(grouped_experts).values)
    assert torch.equal(torch.bincount(grouped_experts, minlength=r.num_experts), plan.counts)
    assert torch.equal(plan.token, r.token[plan.pair])


@settings(max_examples=200, deadline=None)
@given(routings(with_priority=True), st.floats(0.05, 3.0), st.booleans())
def test_capacity_bound_and_highest_priority_survive(r, factor, use_priority):
    if not use_priority:
        r = r.replace(priority=None)
    d = Dispatcher(r.num_experts, capacity_factor=factor)
    plan = d.plan(r)
    c = math.ceil(factor * r.num_pairs / r.num_experts)
    assert plan.capacity == c
    assert int(plan.counts.max()) <= c
    kept = set(plan.pair.tolist())
    prio = r.priority if r.priority is not None else -torch.arange(r.num_pairs, dtype=torch.float64)
    for e in range(r.num_experts):
        pairs = (r.expert == e).nonzero().flatten().tolist()
        # kept pairs of expert e are exactly the min(C, n_e) best by (priority desc, pair order)
        best = sorted(pairs, key=lambda a: (-float(prio[a]), a))[: min(c, len(pairs))]
        assert {a for a in pairs if a in kept} == set(best)
    routed = r.num_pairs
    assert math.isclose(float(plan.dropped_fraction), (routed - len(kept)) / max(routed, 1), abs_tol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5), st.integers(1, 8))
def test_combine_of_permute_with_unit_weights_and_k1_is_identity(n, e, d):
    x = torch.randn(n, d, dtype=torch.float64)
    expert = torch.randint(0, e, (n,))
    r = routing_from(torch.arange(n), expert, n, e)
    disp = Dispatcher(e)
    plan = disp.plan(r)
    rows = disp.dispatch(x, plan)
    assert torch.equal(disp.combine(rows, plan, n), x)


def test_combine_sums_weighted_rows_per_token():
    x = torch.tensor([[1.0], [10.0]], dtype=torch.float64)
    r = routing_from([0, 0, 1], [0, 1, 1], 2, 2, weight=[0.25, 0.5, 2.0])
    disp = Dispatcher(2)
    plan = disp.plan(r)
    y = disp.combine(disp.dispatch(x, plan) * torch.tensor([[1.0], [1.0], [1.0]], dtype=torch.float64), plan, 2)
    assert y.flatten().tolist() == [0.75, 20.0]


def test_capacity_rounding_options():
    d = Dispatcher(8, capacity_factor=1.05, capacity_multiple=4)
    assert d.capacity(2 * 1576) == 416  # V-MoE worked example: ceil(413.7) = 414 -> multiple of 4
    assert Dispatcher(8, capacity_factor=1.05, capacity_rounding="round").capacity(2 * 1576) == 414
    assert Dispatcher(4, capacity_factor=1.0, capacity_rounding="round").capacity(2) == 0  # round(0.5), half-even


def test_dropped_pairs_follow_priority_not_position():
    # V-MoE vector V3: Q = [[.4,0,.2],[.5,.1,.4],[.3,.2,.6]], k=2, capacity 2 per expert
    pairs = [(0, 0, 0.4, 0), (0, 2, 0.2, 1), (1, 0, 0.5, 0), (1, 2, 0.4, 1), (2, 2, 0.6, 0), (2, 0, 0.3, 1)]
    top1 = {0: 0.4, 1: 0.5, 2: 0.6}
    token, expert, weight, rank = zip(*pairs)
    bpr = [-4.0 * r + top1[t] for t, r in zip(token, rank)]
    disp = Dispatcher(3, capacity_factor=1.0)  # ceil(1.0 * 6 / 3) = 2
    vanilla = disp.plan(routing_from(token, expert, 3, 3, priority=[-float(r) for r in rank], weight=weight))
    prio = disp.plan(routing_from(token, expert, 3, 3, priority=bpr, weight=weight))
    kept = lambda plan: sorted((pairs[a][0], pairs[a][1]) for a in plan.pair.tolist())  # noqa: E731
    assert kept(vanilla) == [(0, 0), (0, 2), (1, 0), (2, 2)]
    assert kept(prio) == [(0, 0), (1, 0), (1, 2), (2, 2)]


def test_mismatched_expert_count_is_an_error():
    r = routing_from([0], [0], 1, 3)
    try:
        Dispatcher(2).plan(r)
    except ValueError as err:
        assert "3 experts" in str(err)
    else:
        raise AssertionError("expected ValueError")


@st.composite
def grouped_routings(draw):
    r = draw(routings(with_priority=True))
    groups = draw(st.integers(1, 4))
    group = draw(st.lists(st.integers(0, groups - 1), min_size=r.num_pairs, max_size=r.num_pairs))
    return r.replace(group=torch.as_tensor(group, dtype=torch.long))


@settings(max_examples=200, deadline=None)
@given(grouped_routings(), st.floats(0.05, 3.0))
def test_groups_get_their_own_capacity_per_expert(r, factor):
    d = Dispatcher(r.num_experts, capacity_factor=factor)
    plan = d.plan(r)
    kept = set(plan.pair.tolist())
    assert torch.equal(r.expert[plan.pair], torch.sort(r.expert[plan.pair]).values)  # still grouped by expert
    assert torch.equal(torch.bincount(r.expert[plan.pair], minlength=r.num_experts), plan.counts)
    caps = []
    for g in set(r.group.tolist()):
        in_group = (r.group == g).nonzero().flatten().tolist()
        c = math.ceil(factor * len(in_group) / r.num_experts)  # capacity from the group's own pairs
        caps.append(c)
        for e in range(r.num_experts):
            pairs = [a for a in in_group if int(r.expert[a]) == e]
            best = sorted(pairs, key=lambda a: (-float(r.priority[a]), a))[: min(c, len(pairs))]
            assert {a for a in pairs if a in kept} == set(best)
    assert plan.capacity == max(caps, default=0) or r.num_pairs == 0


def test_one_group_equals_no_group():
    r = routing_from([0, 0, 1, 1, 2, 2, 3], [0, 1, 0, 1, 0, 1, 0], 4, 2, priority=[3, 1, 4, 1, 5, 9, 2])
    d = Dispatcher(2, capacity_factor=0.6)
    a, b = d.plan(r), d.plan(r.replace(group=torch.zeros(7, dtype=torch.long)))
    assert torch.equal(a.pair, b.pair) and torch.equal(a.counts, b.counts) and a.capacity == b.capacity


def test_routing_select_keeps_per_pair_fields_aligned():
    r = routing_from([0, 0, 1, 2], [1, 0, 1, 0], 3, 2, priority=[0.5, 0.1, 0.2, 0.3], weight=[1.0, 2.0, 3.0, 4.0])
    r = r.replace(group=torch.tensor([0, 0, 1, 1]))
    s = r.select(torch.tensor([True, False, True, False]))
    assert s.token.tolist() == [0, 1] and s.expert.tolist() == [1, 1] and s.weight.tolist() == [1.0, 3.0]
    assert s.priority.tolist() == [0.5, 0.2] and s.group.tolist() == [0, 1] and s.probs is r.probs
