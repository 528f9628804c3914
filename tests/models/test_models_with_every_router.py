"""Every registered router, layer-level method and residual rule works inside the models: forward, backward
and the Trainer's after_step; the combinations that cannot work fail with a clear error."""

import pytest
import torch

from smoe.layer import available_layers
from smoe.models import LM, LMConfig, SMoEVAE, VAEConfig, ViT, ViTConfig
from smoe.residual import available_rules
from smoe.routing import available_routers

METHODS = available_routers() + available_layers()
STACK = {"d_model": 16, "num_layers": 2, "num_heads": 2, "ffn_hidden": 8, "moe_every": 1}


def moe(name: str, num_experts: int = 4, **router_options) -> dict:
    """The `moe` mapping of a model config that uses router or layer-level method `name` (with its defaults)."""
    select = {"method": name} if name in available_layers() else {"router": name}
    return {"num_experts": num_experts, **select, "router_options": router_options}


def train_once(model, loss_of):
    out, loss = loss_of(model)
    (loss + sum(o.aux_loss for o in out.moe)).backward()
    assert len(out.moe) == len(model.moe_layers())
    for layer, layer_out in zip(model.moe_layers(), out.moe):
        layer.after_step([layer_out.stats])
    model.eval()
    loss_of(model)


def lm_loss(model):
    out = model(torch.randint(0, 11, (2, 6)), step=0, generator=torch.Generator().manual_seed(0))
    return out, out.logits.float().logsumexp(-1).mean()


def classifier_loss(model):
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = model(torch.randint(0, 11, (2, 6)), mask, step=0, generator=torch.Generator().manual_seed(0))
    return out, out.logits.logsumexp(-1).mean()


def vit_loss(model):
    out = model(torch.randn(2, 5, 4), step=0, generator=torch.Generator().manual_seed(0))
    return out, out.logits.logsumexp(-1).mean()


def vae_loss(model):
    x = torch.rand(4, 1, 8, 8)
    out = model(x, step=0, generator=torch.Generator().manual_seed(0))
    return out, sum(model.loss(x, out).values())


@pytest.mark.parametrize("router", METHODS)
def test_causal_lm_and_classifier(router):
    train_once(LM(LMConfig(vocab_size=11, max_len=8, moe=moe(router), **STACK)), lm_loss)
    train_once(LM(LMConfig(vocab_size=11, max_len=8, moe=moe(router), causal=False, num_classes=3, **STACK)),
               classifier_loss)


@pytest.mark.parametrize("router", METHODS)
def test_vit(router):
    options = {"vocab_size": 7} if router == "hash" else {}
    model = ViT(ViTConfig(patch_dim=4, num_patches=5, num_classes=3, moe=moe(router, **options), **STACK))
    if router == "hash":  # routes by token id; patches have none
        with pytest.raises(ValueError, match="token"):
            vit_loss(model)
        return
    train_once(model, vit_loss)


@pytest.mark.parametrize("router", METHODS)
def test_vae(router):
    if router in available_layers():
        with pytest.raises(ValueError, match=r"experts are its decoders; leave \['method'\]"):
            VAEConfig(moe=moe(router))
        return
    options = {"vocab_size": 7} if router == "hash" else {}
    model = SMoEVAE(VAEConfig(image_size=8, latent_dim=3, encoder_channels=[2, 3, 4], decoder_channels=[2, 3],
                              gate_hidden=[5], moe=moe(router, num_experts=3, **options)))
    if router in ("attention", "hash"):  # they need attention probabilities / token ids, which a VAE has not
        with pytest.raises(ValueError, match=r"attn_probs|token"):
            vae_loss(model)
        return
    train_once(model, vae_loss)


@pytest.mark.parametrize("rule", available_rules())
def test_every_residual_rule_in_the_lm(rule):
    train_once(LM(LMConfig(vocab_size=11, max_len=8, rule=rule, **STACK)), lm_loss)


def test_lm_hands_its_vocabulary_to_routers_that_route_by_token_id():
    model = LM(LMConfig(vocab_size=11, max_len=8, moe=moe("hash", k=1), **STACK))
    assert all(layer.router.options.vocab_size == 11 for layer in model.moe_layers())
