"""Property: every router and layer-level method, given any layer input (shapes, dtypes, masks, capacity, k, train or
eval), answers with a clear ValueError or a finite output of x's shape and dtype (masked tokens 0) whose backward
pass is finite, never another exception. Each example is valid or breaks one rule (`FAULTS`)."""

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from smoe import build_moe
from smoe.layer import available_layers
from smoe.routing import available_routers

D, VOCAB = 8, 16
NEEDS = {"hash": {"vocab_size": VOCAB}}  # options without which a router cannot be built
FAULTS = ("width", "mask-shape", "mask-dtype", "dtype", "capacity", "k", "token-ids", "attn-probs")


@st.composite
def layer_inputs(draw):
    fault = draw(st.sampled_from([None, None, None, None, *FAULTS]))
    lead = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
    scale = draw(st.sampled_from([1.0, 1e3, 1e-20]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 9)))
    x = torch.randn((*lead, D + (fault == "width")), generator=g) * scale
    mask = draw(st.sampled_from(["none", "random", "all", "nothing"]))
    mask = {"none": None, "random": torch.rand(lead, generator=g) < 0.6, "all": torch.ones(lead, dtype=torch.bool),
            "nothing": torch.zeros(lead, dtype=torch.bool)}[mask]
    if fault == "mask-shape":
        mask = torch.ones((*lead, 2), dtype=torch.bool)
    elif fault == "mask-dtype":
        mask = torch.ones(lead)
    num_experts = draw(st.integers(1, 6))
    k = draw(st.integers(num_experts + 1, 8) if fault == "k" else st.integers(1, num_experts))
    capacity = draw(st.sampled_from([0.0, -1.0, float("nan")] if fault == "capacity" else [None, 0.01, 0.5, 1.0, 4.0]))
    token_ids = torch.randint(0, VOCAB + 5 * (fault == "token-ids"), lead, generator=g)
    batch, length = (lead[0], lead[1]) if len(lead) == 2 else (1, lead[0]) if len(lead) == 1 else (1, 1)
    attn = torch.softmax(torch.randn(batch, length, length + (fault == "attn-probs"), generator=g), -1)
    return {"x": x.to(dtype), "mask": mask, "layer_dtype": torch.float64 if fault == "dtype" else dtype,
            "num_experts": num_experts, "k": k, "capacity_factor": capacity, "train": draw(st.booleans()),
            "token_ids": token_ids, "attn_probs": attn, "causal": draw(st.booleans()), "step": draw(st.integers(0, 9)),
            "fault": fault}


@pytest.mark.parametrize("router", available_routers() + available_layers())
@settings(max_examples=40)
@given(case=layer_inputs())
def test_any_layer_input_gives_a_value_error_or_a_finite_output(router, case):
    x, mask = case["x"], case["mask"]
    try:
        layer = build_moe(D, case["num_experts"], 16, router=router, k=case["k"],
                          capacity_factor=case["capacity_factor"], **NEEDS.get(router, {}))
        layer = layer.to(case["layer_dtype"]).train(case["train"])
        out = layer(x.requires_grad_(), mask, token_ids=case["token_ids"], attn_probs=case["attn_probs"],
                    causal=case["causal"], step=case["step"], generator=torch.Generator().manual_seed(0))
    except ValueError as e:
        event(f"ValueError ({case['fault']}): {str(e)[:40]}")
        return
    event(f"output ({case['fault']})")
    assert out.y.shape == x.shape and out.y.dtype == x.dtype
    assert torch.isfinite(out.y.float()).all() and torch.isfinite(out.aux_loss)
    if mask is not None:
        assert (out.y[~mask] == 0).all()
    (out.y.float().sum() + out.aux_loss.float()).backward()
    assert x.grad is None or torch.isfinite(x.grad.float()).all()
    for p in layer.parameters():
        assert p.grad is None or torch.isfinite(p.grad.float()).all()
