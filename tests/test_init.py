"""Keyed initialisation (smoe.init): parameters shared by two models start equal, each module keeps its own init
distribution, and plain construction is unchanged."""

import pytest
import torch
from torch import nn

from smoe.init import TORCH_RULES, init_keyed, param_seed
from smoe.layer import available_layers
from smoe.models import LM, LMConfig, SMoEVAE, VAEConfig, ViT, ViTConfig
from smoe.routing import available_routers

METHODS = available_routers() + available_layers()
STACK = {"d_model": 16, "num_layers": 2, "num_heads": 2, "ffn_hidden": 8, "moe_every": 1}


def moe(name: str, num_experts: int = 4, **router_options) -> dict:
    """The `moe` mapping of a model config that uses router or layer-level method `name`."""
    select = {"method": name} if name in available_layers() else {"router": name}
    return {"num_experts": num_experts, **select, "router_options": router_options}


def lm(router, **options):
    return LM(LMConfig(vocab_size=11, max_len=8, moe=moe(router, **options), **STACK))


def vit(router, **options):
    return ViT(ViTConfig(patch_dim=4, num_patches=5, num_classes=3,
                         moe=moe(router, **({"vocab_size": 7, **options} if router == "hash" else options)), **STACK))


def params(model):
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("build", [lm, vit])
@pytest.mark.parametrize("other", ["xmoe", "deepseek", "expert_choice", "similarity"])
def test_parameters_of_the_same_name_and_shape_start_equal_across_routers(build, other):
    torch.manual_seed(0)
    a = init_keyed(build("topk"), seed=7)
    torch.manual_seed(1)  # a different global state, and the other router draws differently at construction
    b = init_keyed(build(other), seed=7)
    pa, pb = params(a), params(b)
    shared = [n for n in pa if n in pb and pa[n].shape == pb[n].shape]
    # embeddings, attention, norms, experts and head are shared; only router parameters may differ
    assert any("experts.w_in" in n for n in shared) and any("qkv" in n for n in shared)
    assert any(n.startswith(("tok_emb", "pos_emb", "patch_emb")) for n in shared)
    for name in shared:
        assert torch.equal(pa[name], pb[name]), name
    c = init_keyed(build("topk"), seed=8)
    assert not torch.equal(params(c)["blocks.0.attn.qkv.weight"], pa["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize(("router", "options"), [(name, {}) for name in METHODS] + [
    ("topk", {"noise": "learned"}), ("similarity", {"similarity": "bilinear"}), ("xmoe", {"expert_norm": None})])
def test_each_parameter_keeps_its_modules_init_distribution(router, options):
    """Against plain construction: constant inits (norms, zero noise gate, identity, [CLS], temperature; the same
    under two global seeds) are kept exactly, random ones keep their scale (embeddings N(0, 0.02), Linear and
    experts U(+-1/sqrt(fan_in)), orthogonal expert embeddings)."""
    builds = [lambda: lm(router, **options), lambda: vit(router, **options)]
    if router in available_routers() and router != "hash":  # the VAE routes latents, which have no token ids
        builds.append(lambda: SMoEVAE(VAEConfig(image_size=8, moe=moe(router, num_experts=5, k=1, **options))))
    for build in builds:
        torch.manual_seed(0)
        plain = params(build())
        torch.manual_seed(1)
        other = params(build())
        keyed = params(init_keyed(build(), seed=3))
        assert plain.keys() == keyed.keys()
        for name, p in plain.items():
            q = keyed[name]
            if torch.equal(p, other[name]):
                assert torch.equal(p, q), name
                continue
            assert not torch.equal(p, q), name
            if p.numel() >= 64:  # enough values to compare scales
                assert float(q.abs().max()) <= float(p.abs().max()) * 1.2, name  # uniform bounds, row norms
                assert float(q.std()) == pytest.approx(float(p.std()), rel=0.3), name


def test_torch_rules_reproduce_torch_reset_parameters():
    for module in (nn.Linear(5, 3), nn.Conv2d(2, 4, 3), nn.Embedding(6, 4, padding_idx=2)):
        torch.manual_seed(11)
        module.reset_parameters()
        expected = {n: p.clone() for n, p in module.named_parameters()}
        # one generator for every name, consumed in torch's order, gives torch's values exactly
        generator = torch.Generator().manual_seed(11)
        init_keyed(module, 0)  # keyed: other values ...
        assert not all(torch.equal(p, expected[n]) for n, p in module.named_parameters())
        rule = next(r for kind, r in TORCH_RULES.items() if isinstance(module, kind))
        rule(module, lambda name, g=generator: g)  # ... by the same rule as torch's
        for n, p in module.named_parameters():
            assert torch.equal(p, expected[n]), n


def test_global_generator_untouched_and_seed_is_stable():
    torch.manual_seed(5)
    model = lm("topk")
    state = torch.get_rng_state()
    init_keyed(model, 1)
    assert torch.equal(torch.get_rng_state(), state)
    # from SHA-256 of "1/blocks.0.attn.qkv.weight": the same in every process (Python's hash() is salted)
    assert param_seed(1, "blocks.0.attn.qkv.weight") == 0x6a4697bac8dc3c38
    assert 0 <= param_seed(123, "x") < 2**63 and param_seed(1, "a") != param_seed(2, "a") != param_seed(1, "b")


def test_a_module_without_a_rule_is_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

    model = nn.Sequential(nn.Linear(2, 2), Odd())
    with pytest.raises(TypeError, match=r"module '1' \(Odd\) has parameters but no init rule"):
        init_keyed(model, 0)
