import pytest
import torch

from smoe.blocks import run_blocks
from smoe.models import ViT, ViTConfig


def small(**kw) -> ViTConfig:
    base = {"patch_dim": 4, "num_patches": 5, "num_classes": 3, "d_model": 16, "num_layers": 4, "num_heads": 2,
            "ffn_hidden": 8, "moe": {"num_experts": 4, "router_options": {"k": 2}}}
    return ViTConfig(**{**base, **kw})


def test_vmoe_placement_every_other_and_last_n():
    assert [b.is_moe for b in ViT(small()).blocks] == [False, True, False, True]  # "Every 2" is the default
    model = ViT(small(num_layers=8, moe_last=2))  # V-MoE S/32 "Last 2": blocks 5 and 7
    assert [i for i, b in enumerate(model.blocks) if b.is_moe] == [5, 7]
    assert len(model.moe_layers()) == 2


def test_forward_by_hand_cls_and_mean_pooling():
    for pool in ("cls", "mean"):
        model = ViT(small(pool=pool)).double()
        patches = torch.randn(2, 5, 4, dtype=torch.float64)
        out = model(patches)
        assert out.logits.shape == (2, 3) and len(out.moe) == 2
        assert all(o.routing.probs.shape == (12, 4) for o in out.moe)  # 2 images x (5 patches + CLS)
        x = torch.cat([model.cls.expand(2, 1, 16), model.patch_emb(patches)], 1) + model.pos_emb
        x, _ = run_blocks(model.blocks, x)
        h = model.ln_f(x)
        pooled = h[:, 0] if pool == "cls" else h[:, 1:].mean(1)
        assert torch.allclose(out.logits, model.head(pooled))


def test_images_do_not_interact_under_dropless_routing():
    model = ViT(small()).double()
    patches = torch.randn(3, 5, 4, dtype=torch.float64)
    assert torch.allclose(model(patches).logits[2:], model(patches[2:]).logits)


def test_bad_input_and_config():
    with pytest.raises(ValueError, match="patches must be a float \\(B, 5, 4\\)"):
        ViT(small())(torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="pool must be one of"):
        small(pool="max")
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        small(num_classes=1)
