import pytest
import torch

from smoe.integrations.embed import hf_embedder
from smoe.integrations.hf import SUPPORTED_BLOCKS, moe_blocks, record_router_logits, routing_to_topk, tiny_hf_model
from smoe.integrations.swap import swap_router
from smoe.routing import Routing

ARCHS = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"]


def ids(batch=2, length=12, vocab=512, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_topk_swap_keeps_logits(arch):
    model = tiny_hf_model(arch)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
        report = swap_router(model, "topk")
        after = model(x).logits
    assert len(report.layers) == model.config.num_hidden_layers == len(report.reused_gate)
    assert torch.allclose(before, after, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_still_works_after_swap(arch):
    model = tiny_hf_model(arch)
    x = ids(batch=2, length=5)
    mask = torch.ones_like(x)
    mask[0, :2] = 0  # left padding
    ref = model.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False)
    swap_router(model, "topk")
    out = model.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 9) and torch.equal(out, ref)


def test_expert_choice_swap_runs_with_variable_experts_per_token():
    model = tiny_hf_model("olmoe")
    swap_router(model, "expert_choice", capacity_factor=1.0)
    with torch.no_grad():
        out = model(ids()).logits
    assert torch.isfinite(out).all()


def test_routing_to_topk_pads_with_zero_weight():
    r = Routing(token=torch.tensor([2, 0, 2, 2]), expert=torch.tensor([1, 3, 0, 2]),
                weight=torch.tensor([0.5, 1.0, 0.25, 0.25]), probs=torch.zeros(3, 4), num_experts=4)
    w, e = routing_to_topk(r)
    assert w.tolist() == [[1.0, 0, 0], [0, 0, 0], [0.5, 0.25, 0.25]]
    assert e.tolist() == [[3, 0, 0], [0, 0, 0], [1, 0, 2]]


def test_padding_is_not_routed_with_mask():
    model = tiny_hf_model("mixtral")
    swap_router(model, "topk")
    x = ids(batch=1, length=6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    counts = []
    gate = moe_blocks(model)[0][1].gate
    hook = gate.register_forward_hook(lambda m, a, out: counts.append(int((out[1] > 0).sum())))
    with torch.no_grad():
        model(x, attention_mask=mask)
    hook.remove()
    assert counts == [4 * 2]  # 4 real tokens x k=2, the 2 padding tokens get no pair


def test_router_logits_and_embeddings():
    model = tiny_hf_model("qwen2_moe")
    x, mask = ids(batch=3, length=7), torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0  # right padding
    with record_router_logits(model) as logits, torch.no_grad():
        model(x, attention_mask=mask)
    assert len(logits) == 2 and logits[0].shape == (21, 8)
    emb = hf_embedder(model)(x, mask.bool())
    assert emb["hs"].shape == (3, 64) and emb["rw"].shape == (3, 16) and emb["moee"].shape == (3, 80)
    assert torch.equal(emb["hs"][1], model(x, attention_mask=mask, output_hidden_states=True).hidden_states[-1][1, 4])


def test_unsupported_model_and_router_errors():
    first = next(iter(SUPPORTED_BLOCKS))
    with pytest.raises(ValueError, match="no supported sparse-MoE block.*supported blocks: " + first):
        swap_router(torch.nn.Sequential(torch.nn.Linear(2, 2)), "topk")
    with pytest.raises(ValueError, match="unknown router"):
        swap_router(tiny_hf_model("mixtral"), "nope")
    with pytest.raises(ValueError, match="arch must be one of"):
        tiny_hf_model("llama")


def test_usmoe_swap_follows_the_usmoe_definition_per_sequence():
    model = tiny_hf_model("olmoe")
    block = moe_blocks(model)[0][1]
    w = block.gate.weight.detach().clone()  # reused by the swapped router
    report = swap_router(model, "usmoe", pool="sequence")
    assert report.reused_gate == [name for name, _ in moe_blocks(model)]
    seen = {}
    block.gate.register_forward_hook(lambda m, args, out: seen.update(x=args[0], w=out[1], e=out[2]))
    x = ids(batch=2, length=6)
    with torch.no_grad():
        model(x)
    hidden, weights, experts = seen["x"], seen["w"], seen["e"]
    e, k, t = 8, model.config.num_experts_per_tok, 6
    logits = hidden.float() @ w.float().t()
    u = 0.5 * torch.softmax(logits, -1) + 0.5 * (2 / e) * torch.sigmoid(logits)  # the unified score
    expected = torch.zeros_like(u)
    for b in range(2):  # each sequence keeps its top-(T * k) (token, expert) entries of U, weighted by U
        rows = u[b * t:(b + 1) * t].flatten()
        keep = rows.topk(t * k).indices
        expected[b * t:(b + 1) * t].view(-1)[keep] = rows[keep]
    got = torch.zeros_like(u).scatter_add_(1, experts, weights.float())
    assert torch.allclose(got, expected, atol=1e-6)
    per_token = (expected > 0).sum(1)
    assert per_token.sum() == 2 * t * k and per_token.max() > per_token.min()  # 0..E experts a token
