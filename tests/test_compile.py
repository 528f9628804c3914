"""torch.compile(MoE, fullgraph=True, dynamic=True) on a CPU (issue 17): one graph for forward and backward, no
recompilation for another token count, and the eager layer's numbers.

bfloat16, because in torch 2.13 the fake-tensor rule of grouped_mm accepts bfloat16 only (on any device; the CPU
kernel takes float32 too). The fast tests use the "aot_eager" backend, which traces exactly like inductor
(Dynamo, fake tensors, AOTAutograd) but runs the traced ATen graph instead of generating kernels; the slow test
uses inductor.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from benchmarks.count_ops import ROUTERS
from smoe import MoE

BF16 = torch.bfloat16


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # every test compiles MoE.forward anew (Dynamo caches at most 8 versions of a function)
    yield
    torch._dynamo.reset()


def build(router: str, capacity_factor: float | None) -> MoE:
    options, train = ROUTERS[router]
    torch.manual_seed(0)
    layer = MoE(16, 4, 32, router=router, k=2, capacity_factor=capacity_factor, backend="grouped", **options)
    return layer.to(BF16).train(train)


def step(layer, router: str, batch: int, masked: bool):
    """y, aux loss and every gradient of one forward + backward on (batch, 8) tokens (the last 3 of the first
    sequence masked when `masked`), with the same global random draws for every caller (router noise)."""
    torch.manual_seed(1)
    x = torch.randn(batch, 8, 16, dtype=BF16, requires_grad=True)
    mask = torch.ones(batch, 8, dtype=torch.bool)
    mask[0, -3:] = False
    context = {"token_ids": torch.randint(0, 100, (batch, 8))} if router == "hash" else {}
    out = layer(x, mask if masked else None, **context)
    (out.y.float().square().mean() + out.aux_loss).backward()
    grads = [x.grad] + [p.grad for p in layer.parameters() if p.grad is not None]
    layer.zero_grad(set_to_none=True)
    return out.y, out.aux_loss, grads


def assert_close(compiled, eager):
    y, aux, grads = compiled
    y_ref, aux_ref, grads_ref = eager
    torch.testing.assert_close(y, y_ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(aux, aux_ref, atol=1e-5, rtol=1e-4)
    assert len(grads) == len(grads_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("capacity_factor, masked", [(None, False), (1.25, True)])
@pytest.mark.parametrize("router", list(ROUTERS))
def test_compiles_to_one_graph_and_matches_eager(router, capacity_factor, masked):
    layer = build(router, capacity_factor)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    assert_close(step(compiled, router, 4, masked), step(layer, router, 4, masked))
    compiled_once = counter.frame_count
    assert_close(step(compiled, router, 6, masked), step(layer, router, 6, masked))
    assert counter.frame_count == compiled_once  # another token count: the same graph


@pytest.mark.slow
def test_inductor_compiles_the_layer():
    layer = build("topk", 1.25)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    for batch in (4, 6):
        assert_close(step(compiled, "topk", batch, masked=True), step(layer, "topk", batch, masked=True))
