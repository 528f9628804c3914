import pytest
import torch

from smoe import MoE
from smoe.routing import RoutingContext, build_router
from smoe.routing.losses import load_balance_loss, sequence_balance_loss
from tests.conftest import set_gate

F64 = torch.float64


def logit(p):
    """x with sigmoid(x) = p, so that a gate of weight I gives hand-chosen affinities s = p."""
    p = torch.as_tensor(p, dtype=F64)
    return torch.log(p / (1 - p))


def make(num_experts, **opts):
    """A deepseek router with W_g = I (d = E): affinities s = sigmoid(x). No aux loss unless asked."""
    opts = {"seq_aux_coef": 0.0, **opts}
    r = build_router("deepseek", d_model=num_experts, num_experts=num_experts, **opts).double()
    set_gate(r, torch.eye(num_experts))
    return r


def test_bias_changes_the_choice_but_not_the_weight_by_hand():
    r = make(4, k=2)
    x = logit([[0.9, 0.75, 0.5, 0.25]])
    out = r(x, RoutingContext())
    # no bias: top-2 of s = experts 0, 1; weights 0.9 / 1.65 = 6/11, 0.75 / 1.65 = 5/11
    assert out.expert.tolist() == [0, 1]
    assert torch.allclose(out.weight, torch.tensor([6 / 11, 5 / 11], dtype=F64))
    r.expert_bias.copy_(torch.tensor([-0.1, -0.5, 0.0, 0.3]))
    out = r(x, RoutingContext())
    # s + b = [0.8, 0.25, 0.5, 0.55] -> experts 0, 3; weights from s: 0.9 / 1.15 = 18/23, 0.25 / 1.15 = 5/23
    # (weights from s + b would be 0.8 / 1.35 and 0.55 / 1.35)
    assert out.expert.tolist() == [0, 3]
    assert torch.allclose(out.weight, torch.tensor([18 / 23, 5 / 23], dtype=F64))


def test_routed_scaling_and_normalize_by_hand():
    x = logit([[0.9, 0.75, 0.5, 0.25]])
    raw = make(4, k=2, normalize=False, routed_scaling_factor=2.5)(x, RoutingContext())
    # 2.5 * [0.9, 0.75]
    assert torch.allclose(raw.weight, torch.tensor([2.25, 1.875], dtype=F64))
    normed = make(4, k=2, normalize=True, routed_scaling_factor=2.5)(x, RoutingContext())
    # 2.5 * [6/11, 5/11]
    assert torch.allclose(normed.weight, torch.tensor([15 / 11, 12.5 / 11], dtype=F64))


S6 = [[0.9, 0.1, 0.75, 0.5, 0.6, 0.8]]  # groups {0,1} {2,3} {4,5}


def test_group_limited_routing_by_hand():
    x = logit(S6)
    # ungrouped: top-2 of s = experts 0 (0.9) and 5 (0.8)
    assert make(6, k=2)(x, RoutingContext()).expert.tolist() == [0, 5]
    # group score = sum of top-2: [1.0, 1.25, 1.4] -> groups 1, 2 eligible -> {2: .75, 3: .5, 4: .6, 5: .8}
    # -> experts 5, 2 with weights 0.8 / 1.55 = 16/31 and 0.75 / 1.55 = 15/31
    out = make(6, k=2, n_group=3, topk_group=2)(x, RoutingContext())
    assert out.expert.tolist() == [5, 2]
    assert torch.allclose(out.weight, torch.tensor([16 / 31, 15 / 31], dtype=F64))


def test_without_the_bias_a_group_scores_its_maximum_as_the_release_does():
    # release (inference/model.py, Gate): group score = amax without the bias, top-2 sum with it
    # max: [0.9, 0.75, 0.8] -> groups 0, 2 eligible -> experts 0 (0.9), 5 (0.8); weights 9/17, 8/17
    out = make(6, k=2, n_group=3, topk_group=2, bias_rate=None)(logit(S6), RoutingContext())
    assert out.expert.tolist() == [0, 5]
    assert torch.allclose(out.weight, torch.tensor([9 / 17, 8 / 17], dtype=F64))
    assert make(6, k=2, n_group=3, topk_group=2, bias_rate=None).options.group_score_k == 1
    assert make(6, k=2, n_group=3, topk_group=2, bias_rate=0.0).options.group_score_k == 2
    # the choice stays open: the top-2 sum without a bias ([1.0, 1.25, 1.4] -> groups 1, 2 -> experts 5, 2)
    out = make(6, k=2, n_group=3, topk_group=2, bias_rate=None, group_score_topk=2)(logit(S6), RoutingContext())
    assert out.expert.tolist() == [5, 2]


def test_group_score_topk_option_by_hand():
    # group score = max (top-1): [0.9, 0.75, 0.8] -> groups 0, 2 eligible -> experts 0 (0.9), 5 (0.8)
    out = make(6, k=2, n_group=3, topk_group=2, group_score_topk=1)(logit(S6), RoutingContext())
    assert out.expert.tolist() == [0, 5]


def test_group_scores_include_the_bias_by_hand():
    r = make(6, k=2, n_group=3, topk_group=2)
    r.expert_bias[1] = 0.5
    out = r(logit(S6), RoutingContext())
    # s + b = [0.9, 0.6, 0.75, 0.5, 0.6, 0.8]: group scores [1.5, 1.25, 1.4] -> groups 0, 2 eligible
    # -> experts 0 (0.9), 5 (0.8); weights from s: 0.9 / 1.7 = 9/17, 0.8 / 1.7 = 8/17
    assert out.expert.tolist() == [0, 5]
    assert torch.allclose(out.weight, torch.tensor([9 / 17, 8 / 17], dtype=F64))


def test_probs_are_normalised_affinities_and_logits_kept():
    x = torch.randn(5, 4, dtype=F64)
    out = make(4, k=2)(x, RoutingContext())
    s = torch.sigmoid(x)
    assert torch.allclose(out.probs, s / s.sum(-1, keepdim=True))
    assert torch.allclose(out.logits, x)


# rows of s that sum to 1, so s / sum(s) = s; k = 1 picks experts 0, 1, 0, 0
S2 = [[0.75, 0.25], [0.25, 0.75], [0.9, 0.1], [0.6, 0.4]]


def test_sequence_balance_loss_per_sequence_by_hand():
    r = make(2, k=1, seq_aux_coef=0.5)
    out = r(logit(S2), RoutingContext(batch_shape=(2, 2)))
    assert out.expert.tolist() == [0, 1, 0, 0]
    # seq 0: counts [1, 1], f = 2 / (1 * 2) * [1, 1] = [1, 1], P = [0.5, 0.5] -> 1.0
    # seq 1: counts [2, 0], f = [2, 0], P = [0.75, 0.25] -> 1.5;  mean 1.25, times 0.5
    assert torch.allclose(out.aux["seq_balance"], torch.tensor(0.625, dtype=F64))


def test_sequence_balance_loss_one_sequence_by_hand():
    out = make(2, k=1, seq_aux_coef=1.0)(logit(S2), RoutingContext())
    # counts [3, 1], f = 2 / 4 * [3, 1] = [1.5, 0.5], P = [2.5 / 4, 1.5 / 4] -> 0.9375 + 0.1875
    assert torch.allclose(out.aux["seq_balance"], torch.tensor(1.125, dtype=F64))


def test_sequence_balance_loss_skips_padding_by_hand():
    mask = torch.tensor([True, True, True, False])
    out = make(2, k=1, seq_aux_coef=1.0)(logit(S2), RoutingContext(batch_shape=(2, 2), mask=mask))
    # seq 1 has one real token: counts [1, 0], f = 2 / (1 * 1) * [1, 0] = [2, 0], P = [0.9, 0.1] -> 1.8
    assert 3 not in out.token.tolist()
    assert torch.allclose(out.aux["seq_balance"], torch.tensor((1.0 + 1.8) / 2, dtype=F64))
    # a sequence of padding only is skipped, not counted as 0
    pad_seq = torch.tensor([True, True, False, False])
    out = make(2, k=1, seq_aux_coef=1.0)(logit(S2), RoutingContext(batch_shape=(2, 2), mask=pad_seq))
    assert torch.allclose(out.aux["seq_balance"], torch.tensor(1.0, dtype=F64))


def test_sequence_balance_loss_of_one_sequence_equals_switch_loss():
    probs = torch.softmax(torch.randn(12, 5, dtype=F64), -1)
    expert = torch.randint(0, 5, (24,))
    token = torch.arange(12).repeat_interleave(2)
    assert torch.allclose(sequence_balance_loss(probs, token, expert, seq_len=12, k=2),
                          load_balance_loss(probs, expert))


def test_seq_aux_is_on_by_default_with_the_report_coefficient():
    r = build_router("deepseek", d_model=4, num_experts=4)
    assert r.options.seq_aux_coef == 1e-4 and r.options.bias_rate == 0.001
    out = r(torch.randn(6, 4), RoutingContext(batch_shape=(2, 3)))
    assert set(out.aux) == {"seq_balance"}
    assert make(4, seq_aux_coef=0.0)(torch.randn(3, 4, dtype=F64), RoutingContext()).aux == {}


def test_gradcheck_gate_weights_and_balance_loss():
    r = make(6, k=2, n_group=3, topk_group=2, seq_aux_coef=0.3, routed_scaling_factor=2.5)
    r.expert_bias.copy_(torch.tensor([0.05, -0.02, 0.0, 0.03, -0.04, 0.01]))
    x = torch.randn(8, 6, dtype=F64, requires_grad=True)
    w = r.gate.weight

    def f(x, w):
        out = r(x, RoutingContext(batch_shape=(2, 4)))
        return out.weight, out.aux["seq_balance"]

    assert torch.autograd.gradcheck(f, (x, w))


def test_bias_is_a_buffer_without_gradient():
    r = build_router("deepseek", d_model=4, num_experts=4)
    assert "expert_bias" in r.state_dict() and all(p is not r.expert_bias for p in r.parameters())
    out = r(torch.randn(5, 4), RoutingContext())
    out.weight.sum().backward()
    assert r.expert_bias.grad is None and r.gate.weight.grad is not None


def test_no_bias_option():
    r = make(4, k=2, bias_rate=None)
    assert r.expert_bias is None and "expert_bias" not in r.state_dict()
    x = logit([[0.9, 0.75, 0.5, 0.25]])
    assert r(x, RoutingContext()).expert.tolist() == [0, 1]


def test_in_moe_layer_with_padding():
    m = MoE(8, 6, 16, router="deepseek", k=2, n_group=3, topk_group=2)
    x = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    out = m(x, mask)
    assert out.routing.num_pairs == 16 and not {8, 9} & set(out.routing.token.tolist())
    assert torch.all(out.y[1, 3:] == 0) and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("opts, match", [
    ({"n_group": 4}, "n_group=4 must divide num_experts=6"),
    ({"n_group": 3, "topk_group": 4}, "topk_group must be <= 3"),
    ({"n_group": 3, "topk_group": 0}, "topk_group must be >= 1"),
    ({"n_group": 3, "topk_group": 1, "k": 3}, r"k=3 must be <= topk_group \* experts per group = 2"),
    ({"n_group": 3, "group_score_topk": 3}, "group_score_topk must be <= 2"),
    ({"bias_rate": -0.001}, "bias_rate must be >= 0"),
    ({"seq_aux_coef": -1.0}, "seq_aux_coef must be >= 0"),
    ({"routed_scaling_factor": 0.0}, "routed_scaling_factor must be > 0"),
    ({"normalize": None}, "normalize must be True or False"),
    ({"k": 7}, "k=7 must be <= num_experts=6"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("deepseek", d_model=4, num_experts=6, **opts)
