import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoe.blocks import Block, BlockConfig, run_blocks
from smoe.residual import available_rules, build_rule

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64).view(1, 1, -1)


def ln(x):
    return F.layer_norm(x, x.shape[-1:])


def stack(rule="residual", kinds=("moe", "dense", "moe"), **rule_options):
    blocks = []
    for kind in kinds:
        cfg = BlockConfig(d_model=8, num_heads=2, ffn_hidden=16, rule=rule, rule_options=dict(rule_options),
                          moe={"num_experts": 4, "router_options": {"k": 2}} if kind == "moe" else None)
        blocks.append(Block(cfg))
    return nn.ModuleList(blocks).double()


def test_rules_are_registered():
    assert available_rules() == ["adam", "momentum", "residual", "robust"]


def test_momentum_mu0_gamma1_stack_equals_residual_stack_exactly():
    plain = stack("residual")
    momentum = stack("momentum", mu=0.0, gamma=1.0)
    momentum.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 8, dtype=F64)
    y_plain, _ = run_blocks(plain, x)
    y_mom, outs = run_blocks(momentum, x)
    assert torch.equal(y_plain, y_mom)
    assert "m" in outs[-1].state


def test_heavy_ball_scalar_by_hand():
    # f(x) = -x / 2 (descent direction), mu = 0.5, gamma = 1, x0 = 1:
    # m1 = -0.5, x1 = 0.5; m2 = 0.5 * -0.5 - 0.25 = -0.5, x2 = 0; m3 = -0.25 + 0 = -0.25, x3 = -0.25
    rule = build_rule("momentum", mu=0.5, gamma=1.0)
    x, state, xs, ms = t([1.0]), {}, [], []
    for _ in range(3):
        x, state = rule(x, -x / 2, state, True)
        xs.append(x.item())
        ms.append(state["m"].item())
    assert xs == [0.5, 0.0, -0.25] and ms == [-0.5, -0.5, -0.25]


def test_dense_blocks_pass_the_state_through():
    m = t([1.0, 2.0])
    for name in ("momentum", "adam"):
        rule = build_rule(name)
        h, f = t([0.5, 0.5]), t([3.0, -1.0])
        x, state = rule(h, f, {"m": m}, is_moe=False)
        assert torch.equal(x, h + f) and state["m"] is m
    _, outs = run_blocks(stack("momentum"), torch.randn(1, 4, 8, dtype=F64))
    assert outs[1].state["m"] is outs[0].state["m"]


def test_fresh_state_every_forward():
    blocks = stack("adam")
    x = torch.randn(2, 4, 8, dtype=F64)
    assert torch.equal(run_blocks(blocks, x)[0], run_blocks(blocks, x)[0])


def test_official_momentum_mu0_equals_official_residual_with_negated_experts():
    plain = stack("residual", form="official")
    momentum = stack("momentum", form="official", mu=0.0, gamma=1.0)
    momentum.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for b in momentum:
            if b.is_moe:
                b.ffn.experts.w_out.neg_()
    x = torch.randn(2, 5, 8, dtype=F64)
    assert torch.allclose(run_blocks(plain, x)[0], run_blocks(momentum, x)[0])


def test_official_double_residual_by_hand():
    rule = build_rule("residual", form="official", d_model=3).double()
    h, f = t([1.0, -2.0, 0.5]), t([0.3, 0.1, -0.4])
    assert torch.allclose(rule(h, f, {}, True)[0], ln(h + ln(h + f)))  # LN_o(h + LN_a(h + f))
    assert torch.equal(rule(h, f, {}, False)[0], h + f)  # dense blocks: the plain residual
    assert len(rule.norms) == 2 and len(build_rule("residual").norms) == 0


def test_adam_first_layer_by_hand_then_heavy_ball():
    rule = build_rule("adam")  # mu 0.7, gamma 1, gamma1 1, beta 0.9 / 0.999, eps 1e-8
    h, f = t([0.0, 0.0]), t([2.0, -0.5])
    # p = 0.1 f = (0.2, -0.05), v = 0.001 f^2 = (0.004, 0.00025)
    # p / sqrt(v + 1e-8) = (0.2 / 0.0632456, -0.05 / 0.0158117) = (3.16227371, -3.16221442)
    x, state = rule(h, f, {}, True)
    assert torch.allclose(x, t([3.1622737073, -3.1622144165]), atol=1e-9, rtol=0)
    assert torch.allclose(state["p"], t([0.2, -0.05])) and torch.allclose(state["v"], t([0.004, 0.00025]))
    assert torch.equal(state["m"], f)  # heavy-ball state seeded: gamma * f
    f2 = t([1.0, 1.0])
    x2, state2 = rule(h, f2, state, True)
    assert torch.allclose(x2, 0.7 * f + f2) and state2["p"] is state["p"]  # later layers: heavy ball
    official = build_rule("adam", form="official", d_model=2).double()
    # official: f is a gradient, and the Adam layer is LN_o(h + LN_a(-gamma1 p / sqrt(v + eps)))
    x_off, _ = official(h, f, {}, True)
    assert torch.allclose(x_off, ln(h + ln(-t([3.1622737073, -3.1622144165]))))


def test_robust_coefficients_and_updates_by_hand():
    rule = build_rule("robust")  # rho 0.2, kappa 1.25, L 1
    # beta = 1.25 * 0.64 * 1.2 = 0.96; alpha = 1.25 * 0.008 / 0.25 = 0.04; eps = 0.008 / 0.192 = 1/24
    assert rule.beta == pytest.approx(0.96) and rule.alpha == pytest.approx(0.04)
    assert rule.epsilon == pytest.approx(1 / 24) and rule.epsilon * rule.beta == pytest.approx(0.04)
    h, f1, f2 = t([1.0, 1.0]), t([0.5, -1.0]), t([2.0, 0.0])
    assert rule.ffn_input_shift({}) == 0.0
    x1, s1 = rule(h, f1, {}, True)  # m = f1, x' = h + 0.96 f1
    assert torch.allclose(x1, h + 0.96 * f1) and torch.equal(s1["m"], f1)
    assert torch.allclose(rule.ffn_input_shift(s1), 0.04 * f1)
    x2, s2 = rule(h, f2, s1, True)  # m = 0.04 f1 + f2
    assert torch.allclose(s2["m"], 0.04 * f1 + f2) and torch.allclose(x2, h + 0.96 * (0.04 * f1 + f2))
    x3, s3 = rule(h, f2, s2, False)  # dense: plain residual, state passed
    assert torch.equal(x3, h + f2) and s3 is s2
    official = build_rule("robust", form="official", d_model=2).double()
    x_off, s_off = official(h, f1, {}, True)  # m = -f1, x' = LN(h + beta m)
    assert torch.allclose(x_off, ln(h - 0.96 * f1)) and torch.equal(s_off["m"], -f1)
    assert torch.allclose(official(h, f2, s_off, False)[0], ln(h + f2))  # post-LN on dense blocks too
    assert len(official.norms) == 1


def test_robust_shifts_the_dense_ffn_input():
    blocks = stack("robust", kinds=("moe", "dense"))
    seen = {}
    blocks[1].ffn.register_forward_hook(lambda mod, args, out: seen.update(u=args[0]))
    x = torch.randn(1, 4, 8, dtype=F64)
    _, outs = run_blocks(blocks, x)
    b = blocks[1]
    h = outs[0].x + b.attn(b.ln1(outs[0].x))[0]
    assert torch.allclose(seen["u"], b.ln2(h) + 0.04 * outs[0].state["m"])


@pytest.mark.parametrize("rule", ["momentum", "adam", "robust"])
def test_gradcheck_through_the_state(rule):
    torch.manual_seed(0)
    blocks = nn.ModuleList(
        Block(BlockConfig(d_model=4, num_heads=1, ffn_hidden=4, rule=rule,
                          moe={"num_experts": 2, "router_options": {"k": 1}}))
        for _ in range(2)
    ).double()
    x = torch.randn(1, 3, 4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: run_blocks(blocks, x)[0], (x,))


@pytest.mark.parametrize(
    "name, opts, match",
    [
        ("momentum", {"mu": 1.0}, "mu must be < 1"),
        ("momentum", {"mu": -0.1}, "mu must be >= 0"),
        ("momentum", {"gamma": 0.0}, "gamma must be > 0"),
        ("adam", {"beta2": 1.0}, "beta2 must be < 1"),
        ("adam", {"eps": 0.0}, "eps must be > 0"),
        ("robust", {"kappa": 1.0}, "kappa must be > 1"),
        ("robust", {"rho": 0.0}, "rho must be > 0"),
        ("robust", {"rho": 1.0}, "rho must be < 1"),
        ("robust", {"lipschitz": -1.0}, "lipschitz must be > 0"),
        ("residual", {"form": "post"}, "form must be one of"),
        ("momentum", {"form": "official"}, "needs d_model"),
        ("nesterov", {}, "unknown residual rule 'nesterov'"),
    ],
)
def test_bad_options(name, opts, match):
    with pytest.raises(ValueError, match=match):
        build_rule(name, **opts)


def test_block_config_rejects_unknown_rule():
    with pytest.raises(ValueError, match="rule must be one of"):
        BlockConfig(d_model=8, num_heads=2, ffn_hidden=16, rule="nesterov")
