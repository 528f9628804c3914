import pytest
import torch
from torch import nn

from smoe.blocks import Attention, Block, BlockConfig, build_rule, run_blocks


def cfg(**kw):
    base = {"d_model": 16, "num_heads": 2, "ffn_hidden": 32, "moe": {"num_experts": 4, "router_options": {"k": 2}}}
    return BlockConfig(**{**base, **kw})


def test_eager_attention_equals_sdpa_and_returns_probs():
    attn = Attention(16, 4, causal=True).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    for m in (None, mask):
        fast, none = attn(x, m)
        eager, probs = attn(x, m, need_probs=True)
        assert none is None and torch.allclose(fast[m if m is not None else ...], eager[m if m is not None else ...])
        assert probs.shape == (2, 5, 5)
        assert torch.allclose(probs.sum(-1), torch.ones(2, 5, dtype=torch.float64))
        assert torch.all(probs.triu(1) == 0)  # causal


def test_padding_keys_get_no_attention():
    attn = Attention(16, 2, causal=False)
    mask = torch.tensor([[True, True, False]])
    _, probs = attn(torch.randn(1, 3, 16), mask, need_probs=True)
    assert torch.all(probs[0, :2, 2] == 0)


def test_plain_rule_stack_equals_handwritten_prenorm_stack():
    torch.manual_seed(0)
    blocks = nn.ModuleList([Block(cfg()), Block(cfg(moe=None))]).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    y, outs = run_blocks(blocks, x)
    ref = x
    for b in blocks:
        h = ref + b.attn(b.ln1(ref))[0]
        f = b.ffn(b.ln2(h))
        ref = h + (f.y if b.is_moe else f)
    assert torch.allclose(y, ref)
    assert outs[0].moe is not None and outs[1].moe is None


def test_unknown_rule_and_bad_config():
    with pytest.raises(ValueError, match="unknown residual rule"):
        build_rule("nesterov_typo")
    with pytest.raises(ValueError, match="divisible"):
        Block(cfg(num_heads=3))
    with pytest.raises(ValueError, match="dropout must be <= 1"):
        cfg(dropout=2.0)
