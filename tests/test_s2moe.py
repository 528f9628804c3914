import itertools

import pytest
import torch
from torch import nn

import smoe
from smoe import MoE, S2MoE, build_moe
from smoe.blocks import Block, BlockConfig
from smoe.layer import available_layers, register_layer
from smoe.routing import RoutingContext
from smoe.routing.losses import info_nce

F64 = torch.float64


def make(**opts) -> S2MoE:
    return S2MoE(6, 4, 8, **opts).double()


def fix_gate(layer: S2MoE, value: float) -> None:
    """g = sigmoid(0 x + b): 40 gives exactly 1.0 in float64, 0 gives 0.5."""
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(value)


def mixture(layer: S2MoE, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_e weights[:, e] f_e(x): the reference combine, expert by expert."""
    return sum(weights[:, e:e + 1] * layer.experts.dense_forward(x, e) for e in range(layer.num_experts))


def test_zero_noise_and_gate_one_equals_base_moe():
    layer = make(noise_scale=0.0)
    fix_gate(layer, 40.0)
    x = torch.randn(2, 5, 6, dtype=F64)
    out = layer(x)
    base = layer.moe(x)  # the same experts and router, in training mode
    assert torch.equal(out.y, base.y)
    assert torch.allclose(out.aux_loss, base.aux_loss + out.routing.aux["uncertainty"])
    no_infonce = make(noise_scale=0.0, infonce_coef=0.0)
    no_infonce.load_state_dict(layer.state_dict())
    plain = no_infonce(x)
    assert torch.equal(plain.y, base.y) and torch.equal(plain.aux_loss, base.aux_loss)


def test_eval_is_top1_deterministic_path():
    layer = make(k=2).eval()
    x = torch.randn(10, 6, dtype=F64)
    out = layer(x, generator=torch.Generator().manual_seed(0))
    assert out.routing.experts_per_token().tolist() == [1] * 10
    top1 = torch.softmax(out.routing.logits, -1).argmax(1)
    assert torch.equal(out.routing.expert, top1)
    # k = 2 renormalises the kept weights, so the top-1 expert's output is taken whole; no gate, no noise
    weights = torch.nn.functional.one_hot(top1, 4).to(F64)
    assert torch.allclose(out.y, mixture(layer, x, weights))
    assert "uncertainty" not in out.routing.aux
    assert layer.train()(x).routing.experts_per_token().tolist() == [2] * 10


def test_gate_mixes_clean_and_noisy_paths_by_hand():
    # noise_scale = 0 makes xhat = x + mu exactly; "features": mu = each token's mean over its features
    x = torch.randn(7, 6, dtype=F64)
    xhat = x + x.mean(-1, keepdim=True)
    for route_noisy in ("shared", "own"):
        layer = make(noise_scale=0.0, noise_stats="features", route_noisy=route_noisy)
        fix_gate(layer, 0.0)  # g = 0.5
        out = layer(x)
        clean = out.routing.dense_weights()
        noisy = clean if route_noisy == "shared" else layer.router(xhat, RoutingContext()).dense_weights()
        expected = 0.5 * mixture(layer, x, clean) + 0.5 * mixture(layer, xhat, noisy)
        assert torch.allclose(out.y, expected)


def test_noise_statistics_by_hand():
    layer = make()
    # one sequence x = [1, 3] (d = 1): mu = 2, population sigma = 1
    mu, sigma = layer.noise_statistics(torch.tensor([[[1.0], [3.0]]], dtype=F64), RoutingContext())
    assert mu.item() == 2.0 and sigma.item() == 1.0
    # sequence 1 has a single real token: it uses the statistics of all 3 real tokens [1, 3, 5] (mu 3, var 8/3)
    z = torch.tensor([[[1.0], [3.0]], [[5.0], [100.0]]], dtype=F64)
    ctx = RoutingContext(mask=torch.tensor([True, True, True, False]))
    mu, sigma = layer.noise_statistics(z, ctx)
    assert mu.view(-1).tolist() == [2.0, 3.0]
    assert torch.allclose(sigma.view(-1), torch.tensor([1.0, (8 / 3) ** 0.5], dtype=F64))


def test_perturbation_draws_through_the_generator():
    layer = make(noise_scale=0.5)
    x = torch.tensor([[1.0] * 6, [3.0] * 6], dtype=F64)  # mu = 2, sigma = 1 per feature -> s = 0.5
    g = torch.Generator().manual_seed(5)
    n1, n2 = (torch.randn((1, 2, 6), dtype=F64, generator=g)[0] for _ in range(2))  # eps1's draw, then eps2's
    expected = (1 + 0.5 * n1) * x + (2 + 0.5 * n2)
    got = layer.perturb(x, RoutingContext(generator=torch.Generator().manual_seed(5)))
    assert torch.allclose(got, expected)


def test_uncertainty_loss_on_inputs_outputs_and_subsample():
    x = torch.randn(2, 5, 6, dtype=F64)
    flat = x.view(-1, 6)
    for on in ("inputs", "outputs"):
        layer = make(noise_scale=0.0, noise_stats="features", infonce_on=on, infonce_coef=0.3)
        out = layer(x)
        xhat = flat + flat.mean(-1, keepdim=True)
        if on == "inputs":
            pair = (flat, xhat)
        else:
            w = out.routing.dense_weights()
            pair = (mixture(layer, flat, w), mixture(layer, xhat, w))
        assert torch.allclose(out.routing.aux["uncertainty"], 0.3 * info_nce(*pair, 0.1))
    # at most infonce_tokens real tokens enter the loss: the value is InfoNCE over some pair of rows
    layer = make(noise_scale=0.0, noise_stats="features", infonce_tokens=2, infonce_coef=1.0)
    got = layer(x).routing.aux["uncertainty"]
    xhat = flat + flat.mean(-1, keepdim=True)
    candidates = [info_nce(flat[list(p)], xhat[list(p)], 0.1) for p in itertools.permutations(range(10), 2)]
    assert any(torch.allclose(got, c) for c in candidates)


def test_padding_does_not_change_real_tokens():
    layer = make()
    x = torch.randn(2, 5, 6, dtype=F64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    changed = x.clone()
    changed[~mask] = 30.0
    a = layer(x, mask, generator=torch.Generator().manual_seed(1))
    b = layer(changed, mask, generator=torch.Generator().manual_seed(1))
    assert torch.all(a.y[~mask] == 0)
    assert torch.allclose(a.y, b.y) and torch.allclose(a.aux_loss, b.aux_loss)


def test_same_generator_same_numbers_and_gradcheck():
    layer = make(detach_stats=False, infonce_on="outputs")
    x = torch.randn(8, 6, dtype=F64, requires_grad=True)

    def f(x):
        out = layer(x, generator=torch.Generator().manual_seed(2))
        return out.y, out.aux_loss

    assert torch.equal(f(x)[0], f(x)[0])
    assert not torch.equal(f(x)[0], layer(x, generator=torch.Generator().manual_seed(3)).y)
    assert torch.autograd.gradcheck(f, (x,))


def test_selected_by_name_wherever_an_moe_is_built():
    assert "s2moe" in available_layers() and "s2moe" in smoe.available_layers()
    layer = build_moe(8, 4, 16, router="s2moe", k=2, load_balance_coef=0.1)
    assert isinstance(layer, S2MoE) and layer.router.options.load_balance_coef == 0.1
    assert layer.router.options.eval_k == 1
    assert isinstance(build_moe(8, 4, 16, router="topk"), MoE)
    block = Block(BlockConfig(d_model=8, num_heads=2, ffn_hidden=16, moe={"method": "s2moe", "num_experts": 4}))
    out = block(torch.randn(2, 5, 8), {})
    assert block.is_moe and out.moe.y.shape == (2, 5, 8)
    (out.x.sum() + out.moe.aux_loss).backward()
    assert block.ffn.gate.weight.grad is not None and block.ffn.experts.w_in.grad is not None


def test_plain_moe_refuses_a_layer_level_name():
    with pytest.raises(ValueError, match=r"layer-level method, not a router: build it with smoe.build_moe"):
        MoE(8, 4, 16, router="s2moe")


def test_register_layer_rejects_a_second_class_for_a_name():
    with pytest.raises(ValueError, match=r"'s2moe' is registered twice: by S2MoE from module smoe\.s2moe"):
        register_layer("s2moe")(type("Other", (nn.Module,), {}))


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"method": "other"}, "method='other', but this layer is the method 's2moe'"),
        ({"noise_scale": -1.0}, "noise_scale must be >= 0"),
        ({"noise_stats": "batch"}, "noise_stats must be one of"),
        ({"route_noisy": "none"}, "route_noisy must be one of"),
        ({"infonce_temperature": 0.0}, "infonce_temperature must be > 0"),
        ({"infonce_tokens": 1}, "infonce_tokens must be >= 2"),
        ({"infonce_on": "logits"}, "infonce_on must be one of"),
        ({"detach_stats": 1}, "detach_stats must be True or False"),
        ({"eval_k": 5}, "method_options.eval_k must be <= 4"),
        ({"router": "usmoe"}, "method_options.eval_k=1 needs a router with an eval_k option"),
        ({"eval_k": 1, "router_options": {"eval_k": 2}}, "eval_k is set twice"),
        ({"bogus": 1}, r"unknown option\(s\) \['bogus'\]"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        S2MoE(6, 4, 8, **opts)


def test_other_base_router_without_eval_k():
    layer = S2MoE(6, 4, 8, router="usmoe", eval_k=None).eval()
    assert layer(torch.randn(3, 6)).y.shape == (3, 6)


@pytest.mark.parametrize("noise_stats", ["tokens", "features"])
def test_an_empty_batch_in_training(noise_stats):
    m = build_moe(16, 4, 32, router="s2moe", noise_stats=noise_stats).train()
    x = torch.randn(0, 8, 16, requires_grad=True)
    out = m(x, generator=torch.Generator().manual_seed(0))
    assert out.y.shape == (0, 8, 16) and torch.isfinite(out.aux_loss)
    (out.y.sum() + out.aux_loss).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())
