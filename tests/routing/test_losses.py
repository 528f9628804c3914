import torch

from smoe.routing.losses import cv_squared, entropy, importance_loss, info_nce, load_balance_loss, z_loss


def test_load_balance_by_hand():
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7], [0.8, 0.2, 0.0]], dtype=torch.float64)
    expert = torch.tensor([0, 2, 2, 0])  # top-1 choices
    # f = (.5, 0, .5), P = (.425, .275, .3) -> 3 * (.2125 + .15) = 1.0875 (X-MoE test vector X4)
    assert torch.allclose(load_balance_loss(probs, expert), torch.tensor(1.0875, dtype=torch.float64))


def test_load_balance_is_one_when_balanced_for_any_k():
    probs = torch.full((6, 3), 1 / 3, dtype=torch.float64)
    expert = torch.tensor([0, 1, 2, 0, 1, 2, 1, 2, 0, 2, 0, 1])  # k=2, each expert 4 of 12 pairs
    assert torch.allclose(load_balance_loss(probs, expert), torch.tensor(1.0, dtype=torch.float64))


def test_load_balance_ignores_masked_tokens():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([True, False])
    # only token 0 counts: P = (1, 0), f = (1, 0) -> 2 * 1 = 2
    assert torch.allclose(load_balance_loss(probs, torch.tensor([0]), mask), torch.tensor(2.0, dtype=torch.float64))


def test_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    lse = torch.tensor([torch.log(torch.tensor(2.0)), 2 + torch.log1p(torch.exp(torch.tensor(-1.0)))])
    expected = (lse.double() ** 2).mean()
    assert torch.allclose(z_loss(logits), expected)
    assert torch.allclose(z_loss(logits, torch.tensor([False, True])), lse[1].double() ** 2)


def test_importance_uses_population_std():
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7], [0.8, 0.2, 0.0]], dtype=torch.float64)
    assert torch.allclose(importance_loss(probs), torch.tensor(0.03875, dtype=torch.float64))  # V-MoE vector V1


def test_cv_and_entropy():
    assert cv_squared(torch.tensor([1.0, 1.0, 1.0])) == 0
    assert torch.allclose(entropy(torch.tensor([0.5, 0.5, 0.0])), torch.log(torch.tensor(2.0)))


def test_losses_on_zero_tokens_are_zero_not_nan():
    probs = torch.zeros(0, 4)
    assert load_balance_loss(probs, torch.zeros(0, dtype=torch.long)) == 0
    assert z_loss(torch.zeros(0, 4)) == 0


def test_grouped_importance_is_the_mean_over_groups():
    probs = torch.tensor([[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7], [0.8, 0.2, 0.0],
                          [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    # group 0 is vector V1 (0.03875); group 1: Imp = (0.8, 0.6, 0.6), mean 2/3, pop. var 0.008889 -> CV^2 0.02
    expected = (0.03875 + 0.02) / 2
    assert torch.allclose(importance_loss(probs, group=group), torch.tensor(expected, dtype=torch.float64))
    mask = torch.tensor([True, True, True, True, False, False])  # group 1 has no real token: left out
    assert torch.allclose(importance_loss(probs, mask, group), torch.tensor(0.03875, dtype=torch.float64))


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # cosine ignores the norms
    # logits = cos / t = [[1, 0], [0, 1]] / t; each row's loss -log(e^(1/t) / (e^(1/t) + 1)) = log(1 + e^(-1/t))
    assert torch.allclose(info_nce(a, p, 1.0), torch.tensor(0.3132616875, dtype=torch.float64), atol=1e-9, rtol=0)
    assert torch.allclose(info_nce(a, p, 0.5), torch.tensor(0.1269280110, dtype=torch.float64), atol=1e-9, rtol=0)
    assert info_nce(a[:0], p[:0]) == 0
