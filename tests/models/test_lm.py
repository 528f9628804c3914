import pytest
import torch
import torch.nn.functional as F

import smoe.blocks as blocks
from smoe.blocks import PlainResidual, run_blocks
from smoe.models import LM, LMConfig


def small(**kw) -> LMConfig:
    base = {"vocab_size": 11, "max_len": 8, "d_model": 16, "num_layers": 3, "num_heads": 2, "ffn_hidden": 8,
            "moe": {"num_experts": 4, "router_options": {"k": 2}}}
    return LMConfig(**{**base, **kw})


def test_one_moe_output_per_moe_layer_in_order():
    model = LM(small(moe_every=1))
    captured = []
    for layer in model.moe_layers():
        layer.register_forward_hook(lambda mod, args, kwargs_out: captured.append(kwargs_out))
    idx = torch.randint(0, 11, (2, 5))
    out = model(idx)
    assert out.logits.shape == (2, 5, 11)
    assert len(out.moe) == len(model.moe_layers()) == 3
    assert all(a is b for a, b in zip(out.moe, captured))
    for layer_out in out.moe:  # per layer, never concatenated: (N, E) each, N = B * T
        assert layer_out.routing.probs.shape == (10, 4) and layer_out.routing.logits.shape == (10, 4)
        assert layer_out.stats.counts.shape == (4,) and int(layer_out.stats.counts.sum()) == 20
        assert "load_balance" in layer_out.routing.aux


def test_every_other_block_and_dense_model():
    model = LM(small(num_layers=4, moe_every=2))
    assert [b.is_moe for b in model.blocks] == [False, True, False, True]
    assert len(model(torch.zeros(1, 3, dtype=torch.long)).moe) == 2
    dense = LM(small(moe_every=0))
    assert dense.moe_layers() == [] and dense(torch.zeros(1, 3, dtype=torch.long)).moe == []


def test_forward_is_embedding_blocks_norm_tied_head():
    model = LM(small()).double()
    assert model.head.weight is model.tok_emb.weight
    idx = torch.randint(0, 11, (2, 6))
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(6))
    x, _ = run_blocks(model.blocks, x)
    expected = model.ln_f(x) @ model.tok_emb.weight.T
    assert torch.allclose(model(idx).logits, expected)


def test_causal_lm_does_not_see_future_tokens():
    model = LM(small()).double()
    idx = torch.randint(0, 11, (1, 7))
    changed = idx.clone()
    changed[0, 4:] = (changed[0, 4:] + 1) % 11
    a, b = model(idx).logits, model(changed).logits
    assert torch.allclose(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_sequences_do_not_interact_under_dropless_routing():
    model = LM(small()).double()
    idx = torch.randint(0, 11, (3, 5))
    assert torch.allclose(model(idx).logits[1:2], model(idx[1:2]).logits)


def test_classifier_pools_real_tokens_and_ignores_padding():
    model = LM(small(causal=False, num_classes=3)).double()
    idx = torch.randint(0, 11, (2, 6))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = model(idx, mask)
    assert out.logits.shape == (2, 3)
    other = idx.clone()
    other[1, 4:] = (other[1, 4:] + 5) % 11
    assert torch.allclose(model(other, mask).logits, out.logits)
    for layer_out in out.moe:  # padded tokens (flat ids 10, 11) are never routed
        assert not {10, 11} & set(layer_out.routing.token.tolist())
    # mean pooling over the real tokens, by hand
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(6))
    x, _ = run_blocks(model.blocks, x, mask)
    h = model.ln_f(x)
    pooled = torch.stack([h[0].mean(0), h[1, :4].mean(0)])
    assert torch.allclose(out.logits, model.head(pooled))


def test_every_parameter_gets_a_gradient_router_included():
    model = LM(small())
    idx = torch.randint(0, 11, (2, 6))
    out = model(idx)
    loss = F.cross_entropy(out.logits.flatten(0, 1), idx.flatten()) + sum(o.aux_loss for o in out.moe)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_router_receives_generator_step_and_token_ids(monkeypatch):
    model = LM(small(num_layers=1, moe={"num_experts": 4, "router_options": {"k": 2, "noise": "fixed"}}))
    router = model.moe_layers()[0].router
    seen = []
    original = router.forward
    monkeypatch.setattr(router, "forward", lambda x, ctx: seen.append(ctx) or original(x, ctx))
    idx = torch.randint(0, 11, (2, 4))
    g = torch.Generator().manual_seed(3)
    a = model(idx, step=7, generator=g).logits
    assert seen[0].generator is g and seen[0].step == 7
    assert torch.equal(seen[0].token_ids, idx.reshape(-1))
    again = model(idx, step=7, generator=torch.Generator().manual_seed(3)).logits
    other = model(idx, step=7, generator=torch.Generator().manual_seed(4)).logits
    assert torch.equal(a, again) and not torch.equal(a, other)  # router noise comes from the generator


def test_residual_rule_and_its_options_come_from_the_config(monkeypatch):
    calls = []
    monkeypatch.setattr(blocks, "build_rule", lambda name, **opts: calls.append((name, opts)) or PlainResidual())
    LM(small(rule="momentum", rule_options={"mu": 0.5}))
    assert calls == [("momentum", {"d_model": 16, "mu": 0.5})] * 3  # one rule per block
    monkeypatch.undo()
    model = LM(small(rule="momentum", rule_options={"mu": 0.5}))
    assert [type(b.rule).rule_name for b in model.blocks] == ["momentum"] * 3


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.zeros(2, 3)), "idx must be a \\(B, T\\) long tensor"),
    (lambda m: m(torch.zeros(2, 9, dtype=torch.long)), "exceeds max_len=8"),
    (lambda m: m(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)), "mask must be"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(LM(small()))


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 0}, "vocab_size must be >= 1"),
    ({"num_classes": 1}, "num_classes must be >= 2"),
    ({"causal": "yes"}, "must be bools"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small(**kwargs)


@pytest.mark.parametrize("bad", [11, 99, -1])
def test_token_ids_out_of_the_vocabulary_name_its_size(bad):
    idx = torch.randint(0, 11, (2, 5))
    idx[1, 3] = bad
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size=11\)"):
        LM(small())(idx)
