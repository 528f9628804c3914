import pytest
import torch

from smoe.routing import RoutingContext
from smoe.routing.graph import allowed_links, mix_over_graph, restrict_graph, sparse_top_k

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


def test_mix_over_graph_by_hand_and_per_sequence():
    probs = t([[0.8, 0.2], [0.4, 0.6]])
    graph = t([[[1.0, 0.0], [0.5, 0.5]]])  # one sequence of 2
    # row 1 = 0.5 * [0.8, 0.2] + 0.5 * [0.4, 0.6] = [0.6, 0.4]
    assert torch.allclose(mix_over_graph(probs, graph), t([[0.8, 0.2], [0.6, 0.4]]))
    # two sequences of one token: nothing crosses sequences
    assert torch.equal(mix_over_graph(probs, torch.ones(2, 1, 1, dtype=F64)), probs)


def test_allowed_links_causal_and_padding():
    ctx = RoutingContext(batch_shape=(1, 3), mask=torch.tensor([True, False, True]), causal=True)
    allowed = allowed_links(ctx, 1, 3, torch.device("cpu"))
    # token 0: itself; token 2: tokens 0 and 2, never the padding token 1 (whose own row is unused: never routed)
    assert allowed.int().tolist() == [[[1, 0, 0], [1, 1, 0], [1, 0, 1]]]
    non_causal = allowed_links(RoutingContext(batch_shape=(1, 3)), 1, 3, torch.device("cpu"))
    assert bool(non_causal.all())


def test_restrict_graph_renormalises_and_falls_back_to_self():
    allowed = torch.tensor([[[True, False, False], [False, True, False], [True, False, True]]])
    a = t([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]])
    # row 0: 0.5 / 0.5; row 1: 0.3 / 0.3; row 2: [0.1, 0, 0.3] / 0.4 = [0.25, 0, 0.75]
    expected = t([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.25, 0.0, 0.75]]])
    assert torch.allclose(restrict_graph(a, allowed), expected)
    # a row with no mass on its allowed links keeps the token's own distribution
    empty = t([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]])
    assert torch.equal(restrict_graph(empty, allowed)[0, 0], t([1.0, 0.0, 0.0]))


def test_sparse_top_k_by_hand():
    # top-2 of [0.5, 0.3, 0.2] renormalised: [0.5, 0.3] / 0.8
    assert torch.allclose(sparse_top_k(t([[0.5, 0.3, 0.2]]), 2), t([[0.625, 0.375, 0.0]]))


def test_context_sequences():
    assert RoutingContext().sequences(7) == (1, 7)
    assert RoutingContext(batch_shape=(2, 3, 4)).sequences(24) == (6, 4)
    with pytest.raises(ValueError, match="does not hold 5 tokens"):
        RoutingContext(batch_shape=(2, 3)).sequences(5)
