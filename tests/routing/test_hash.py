import pytest
import torch

from smoe import MoE
from smoe.routing import RoutingContext, build_router
from smoe.routing.hash import balanced_assignment

F64 = torch.float64


def test_balanced_assignment_by_frequency_by_hand():
    # ids by frequency 6 (id 0), 5 (id 2), 4 (id 4), 3 (id 5), 2 (id 3), 1 (id 1); E = 3:
    # 6, 5, 4 open the three experts; 3 joins the emptiest (4 -> 7), 2 joins 5 (-> 7), 1 joins 6 (-> 7)
    table = balanced_assignment([6, 1, 5, 2, 4, 3], num_experts=3, k=1, seed=0)
    expert = [row[0] for row in table]
    assert expert[0] == expert[1] and expert[2] == expert[3] and expert[4] == expert[5]
    assert sorted({expert[0], expert[2], expert[4]}) == [0, 1, 2]


def test_default_table_is_balanced_over_ids():
    r = build_router("hash", d_model=4, num_experts=4, vocab_size=10)
    assert r.table.shape == (10, 1)
    assert sorted(torch.bincount(r.table[:, 0], minlength=4).tolist()) == [2, 2, 3, 3]  # 10 ids over 4 experts
    r2 = build_router("hash", d_model=4, num_experts=4, k=2, vocab_size=10)
    assert torch.all(r2.table[:, 0] != r2.table[:, 1])  # k distinct experts per id
    assert torch.bincount(r2.table.flatten(), minlength=4).tolist() == [5, 5, 5, 5]


def test_table_is_fixed_by_the_seed():
    a = build_router("hash", d_model=4, num_experts=8, vocab_size=200, seed=1)
    b = build_router("hash", d_model=4, num_experts=8, vocab_size=200, seed=1)
    c = build_router("hash", d_model=4, num_experts=8, vocab_size=200, seed=2)
    assert torch.equal(a.table, b.table) and not torch.equal(a.table, c.table)
    assert "table" in a.state_dict() and list(a.parameters()) == []


def test_routing_by_hand():
    r = build_router("hash", d_model=2, num_experts=3, vocab_size=4)
    r.table.copy_(torch.tensor([[2], [0], [1], [2]]))
    ids = torch.tensor([3, 1, 1, 2, 0])
    out = r(torch.zeros(5, 2, dtype=F64), RoutingContext(token_ids=ids))
    assert out.token.tolist() == [0, 1, 2, 3, 4] and out.expert.tolist() == [2, 0, 0, 1, 2]
    assert out.weight.dtype == F64 and torch.equal(out.weight, torch.ones(5, dtype=F64))  # weight 1, as in the paper
    assert torch.equal(out.probs, torch.eye(3, dtype=F64)[[2, 0, 0, 1, 2]]) and out.aux == {}


def test_k2_routing_by_hand_weights_half():
    r = build_router("hash", d_model=2, num_experts=3, k=2, vocab_size=2)
    r.table.copy_(torch.tensor([[2, 0], [1, 2]]))
    out = r(torch.zeros(2, 2), RoutingContext(token_ids=torch.tensor([1, 0])))
    assert out.expert.tolist() == [1, 2, 2, 0] and torch.equal(out.weight, torch.full((4,), 0.5))
    assert torch.equal(out.dense_weights(), torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]))


def test_balance_by_frequency_rebuilds_the_saved_table():
    r = build_router("hash", d_model=2, num_experts=3, vocab_size=6)
    r.balance_by_frequency(torch.tensor([6, 1, 5, 2, 4, 3]))
    e = r.table[:, 0].tolist()
    assert e[0] == e[1] and e[2] == e[3] and e[4] == e[5] and len({e[0], e[2], e[4]}) == 3
    fresh = build_router("hash", d_model=2, num_experts=3, vocab_size=6)
    fresh.load_state_dict(r.state_dict())
    assert torch.equal(fresh.table, r.table)
    with pytest.raises(ValueError, match=r"counts must be \(6,\) non-negative"):
        r.balance_by_frequency(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="non-negative"):
        r.balance_by_frequency(torch.tensor([1, 2, 3, -1, 0, 0]))


def test_moe_layer_uses_the_hashed_expert():
    m = MoE(8, 4, 16, router="hash", k=1, vocab_size=20).double()
    x = torch.randn(2, 5, 8, dtype=F64)
    ids = torch.randint(0, 20, (2, 5))
    out = m(x, token_ids=ids)
    flat, table = x.reshape(-1, 8), m.router.table[ids.reshape(-1), 0]
    expected = torch.stack([m.experts.dense_forward(flat[t:t + 1], int(table[t]))[0] for t in range(10)])
    assert torch.allclose(out.y.reshape(-1, 8), expected)


def test_padding_ids_are_ignored_and_not_routed():
    m = MoE(8, 4, 16, router="hash", k=1, vocab_size=20)
    ids = torch.tensor([[3, 7, -100]])  # -100: a padding id outside the vocabulary
    mask = torch.tensor([[True, True, False]])
    out = m(torch.randn(1, 3, 8), mask, token_ids=ids)
    assert out.routing.token.tolist() == [0, 1] and torch.all(out.y[0, 2] == 0)


def test_missing_or_bad_token_ids_are_clear_errors():
    m = MoE(8, 4, 16, router="hash", k=1, vocab_size=20)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"hash router needs token ids: call MoE\(x, token_ids=ids\)"):
        m(x)
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, vocab_size=20\), got \[0, 20\]"):
        m(x, token_ids=torch.tensor([[0, 1, 2], [3, 4, 20]]))
    with pytest.raises(ValueError, match="token_ids must be an integer tensor"):
        m(x, token_ids=torch.zeros(2, 3))


@pytest.mark.parametrize("opts, match", [
    ({}, "needs vocab_size"),
    ({"vocab_size": 0}, "vocab_size must be >= 1"),
    ({"vocab_size": 10, "k": 5}, "k=5 must be <= num_experts=4"),
    ({"vocab_size": 10, "seed": -1}, "seed must be >= 0"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("hash", d_model=4, num_experts=4, **opts)
