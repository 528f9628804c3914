import pytest
import torch
from torch import nn

from smoe import MoE
from smoe.blocks import Block, BlockConfig, run_blocks
from smoe.routing import RoutingContext, build_router
from smoe.routing.graph import mix_over_graph, restrict_graph
from tests.conftest import set_gate

F64 = torch.float64


def make(**opts):
    opts = {"load_balance_coef": 0.0, **opts}
    return build_router("attention", d_model=opts.pop("d", 2), num_experts=opts.pop("e", 2), **opts).double()


def test_attention_mixing_by_hand():
    r = make(k=1)
    set_gate(r, [[1.0, 0.0], [0.0, 1.0]])  # logits = x
    x = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]], dtype=F64)
    # P = softmax rows: (s(-1), s(1)) = (0.268941, 0.731059); (s(2), s(-2)) = (0.880797, 0.119203); (0.5, 0.5)
    attn = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.6, 0.2]]], dtype=F64)
    # P~ row 1 = 0.5 * (0.268941, 0.731059) + 0.5 * (0.880797, 0.119203) = (0.574869, 0.425131)
    # P~ row 2 = 0.2 * P0 + 0.6 * P1 + 0.2 * P2 = (0.682267, 0.317733)
    expected = torch.tensor([[0.2689414214, 0.7310585786], [0.5748692497, 0.4251307503],
                             [0.6822665311, 0.3177334689]], dtype=F64)
    out = r(x, RoutingContext(batch_shape=(1, 3), attn_probs=attn))
    assert torch.allclose(out.probs, expected, atol=1e-9, rtol=0)
    assert out.expert.tolist() == [1, 0, 0] and torch.allclose(out.weight, expected.max(1).values, atol=1e-9, rtol=0)


def test_identity_attention_equals_topk_exactly():
    x = torch.randn(2, 4, 6, dtype=F64)
    topk = build_router("topk", d_model=6, num_experts=5, k=2).double()
    att = build_router("attention", d_model=6, num_experts=5, k=2).double()
    att.gate.weight.data.copy_(topk.gate.weight.data)
    eye = torch.eye(4, dtype=F64).expand(2, 4, 4)
    a = topk(x.view(-1, 6), RoutingContext(batch_shape=(2, 4)))
    b = att(x.view(-1, 6), RoutingContext(batch_shape=(2, 4), attn_probs=eye))
    for name in ("token", "expert", "weight", "probs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.aux["load_balance"], b.aux["load_balance"])


def test_attention_probs_are_restricted_to_causal_real_tokens():
    r = make(k=1)
    x = torch.randn(3, 2, dtype=F64)
    full = torch.softmax(torch.randn(1, 3, 3, dtype=F64), -1)  # looks ahead and at padding
    mask = torch.tensor([True, False, True])
    out = r(x, RoutingContext(batch_shape=(1, 3), attn_probs=full, causal=True, mask=mask))
    # token 2 may read tokens 0 and 2 only: (A20 P0 + A22 P2) / (A20 + A22)
    p = torch.softmax(out.logits, -1)
    row2 = (full[0, 2, 0] * p[0] + full[0, 2, 2] * p[2]) / (full[0, 2, 0] + full[0, 2, 2])
    assert torch.allclose(out.probs[2], row2) and torch.allclose(out.probs[0], p[0])
    assert 1 not in out.token.tolist()


def test_missing_or_misshapen_attention_probs():
    r = make()
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="needs attn_probs"):
        r(x, RoutingContext(batch_shape=(2, 2)))
    with pytest.raises(ValueError, match=r"attn_probs must have shape \(B, T, T\) = \(2, 2, 2\)"):
        r(x, RoutingContext(batch_shape=(2, 2), attn_probs=torch.ones(1, 4, 4)))
    with pytest.raises(ValueError, match="needs attn_probs"):
        MoE(2, 2, 4, router="attention")(torch.randn(2, 2, 2))


def block(router="attention", causal=True, **opts):
    return Block(BlockConfig(d_model=8, num_heads=2, ffn_hidden=16, causal=causal,
                             moe={"router": router, "num_experts": 4, "router_options": {"k": 2, **opts}})).double()


def test_block_hands_its_attention_probs_to_the_router():
    b = block()
    x = torch.randn(2, 5, 8, dtype=F64)
    out = b(x, {})
    assert out.attn_probs is not None and out.attn_probs.shape == (2, 5, 5)  # eager path chosen automatically
    p = torch.softmax(out.moe.routing.logits, -1)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 5, 5)
    assert torch.allclose(out.moe.routing.probs, mix_over_graph(p, restrict_graph(out.attn_probs, allowed)))
    assert block(router="topk")(x, {}).attn_probs is None  # other routers keep the fused SDPA path


def test_causal_decoder_routing_ignores_later_tokens():
    torch.manual_seed(3)
    blocks = nn.ModuleList([block(), block()])
    x = torch.randn(2, 6, 8, dtype=F64)
    later = x.clone()
    later[:, 4:] = torch.randn(2, 2, 8, dtype=F64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    _, outs_a = run_blocks(blocks, x, mask)
    _, outs_b = run_blocks(blocks, later, mask)
    early = torch.arange(12).view(2, 6)[:, :4].reshape(-1)
    for a, b in zip(outs_a, outs_b):
        assert torch.allclose(a.moe.routing.dense_weights()[early], b.moe.routing.dense_weights()[early])
        assert torch.allclose(a.x[:, :4], b.x[:, :4])


def test_gradients_reach_attention_unless_detached():
    x = torch.randn(3, 2, dtype=F64)
    attn = torch.softmax(torch.randn(1, 3, 3, dtype=F64), -1).requires_grad_()
    for detach in (False, True):
        r = make(k=1, detach_graph=detach)
        out = r(x, RoutingContext(batch_shape=(1, 3), attn_probs=attn))
        (g,) = torch.autograd.grad(out.weight.sum(), attn, allow_unused=True)
        assert g is None if detach else bool(g.abs().sum() > 0)


def test_gradcheck_wrt_input_and_attention():
    r = make(d=3, e=3, k=2, mix=0.7, load_balance_coef=0.2)
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    scores = torch.randn(2, 2, 2, dtype=F64, requires_grad=True)

    def f(x, scores):
        out = r(x, RoutingContext(batch_shape=(2, 2), attn_probs=torch.softmax(scores, -1)))
        return out.weight, out.aux["load_balance"]

    assert torch.autograd.gradcheck(f, (x, scores))


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"mix": -0.1}, "mix must be >= 0"),
        ({"neighbour_probs": "x"}, "neighbour_probs must be one of"),
        ({"temperature": 1.0}, r"unknown option\(s\) \['temperature'\]"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        build_router("attention", d_model=2, num_experts=2, **opts)
