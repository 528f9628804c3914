import pytest
import torch
import torch.nn.functional as F

from smoe.experts import Experts


def grouped_input(e, counts, d, dtype=torch.float32):
    counts = torch.tensor(counts)
    return torch.randn(int(counts.sum()), d, dtype=dtype), counts


def reference(ex, x, counts):
    """Per-expert dense application, the definition of the grouped computation."""
    outs, lo = [], 0
    for e, n in enumerate(counts.tolist()):
        outs.append(ex.dense_forward(x[lo:lo + n], e))
        lo += n
    return torch.cat(outs)


@pytest.mark.parametrize("kind", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize("bias", [False, True])
def test_loop_matches_definition_in_float64_with_gradcheck(kind, bias):
    ex = Experts(3, 4, 6, kind=kind, bias=bias, backend="loop").double()
    x, counts = grouped_input(3, [2, 0, 3], 4, torch.float64)
    assert torch.allclose(ex(x, counts), reference(ex, x, counts))
    x.requires_grad_()
    params = [p for p in ex.parameters()]
    assert torch.autograd.gradcheck(lambda x, *p: ex(x, counts), (x, *params))


@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_and_loop_paths_agree_forward_and_backward(kind, bias):
    ex = Experts(4, 16, 32, kind=kind, bias=bias)
    x, counts = grouped_input(4, [5, 0, 7, 3], 16)
    outs = {}
    for backend in ("grouped", "loop"):
        ex.backend = backend
        ex.zero_grad()
        xi = x.clone().requires_grad_()
        y = ex(xi, counts)
        y.sum().backward()  # an expanded (stride-0) gradient: must work on the grouped path too
        outs[backend] = (y, xi.grad, *[p.grad for p in ex.parameters()])
    for a, b in zip(outs["grouped"], outs["loop"]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_every_expert_gets_a_gradient_even_without_tokens():
    for backend in ("grouped", "loop"):
        ex = Experts(3, 8, 8, backend=backend, bias=True)
        x, counts = grouped_input(3, [4, 0, 0], 8)
        ex(x, counts).sum().backward()
        for p in ex.parameters():
            assert p.grad is not None and torch.all(p.grad[1:] == 0)


def test_zero_rows():
    for backend in ("grouped", "loop"):
        ex = Experts(2, 8, 8, backend=backend)
        y = ex(torch.zeros(0, 8), torch.tensor([0, 0]))
        assert y.shape == (0, 8)


def test_single_expert_equals_plain_swiglu_mlp():
    ex = Experts(1, 8, 12).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    gate, up = ex.w_in[0].split(12, dim=1)
    expected = (F.silu(x @ gate) * (x @ up)) @ ex.w_out[0]
    assert torch.allclose(ex(x, torch.tensor([5])), expected)


def test_auto_backend_is_chosen_at_construction_and_on_dtype_changes():
    ex = Experts(2, 8, 8)
    assert ex.active_backend == "loop"  # CPU float32: the loop (measured faster there)
    assert ex.to(torch.bfloat16).active_backend == "grouped"
    assert ex.double().active_backend == "loop"  # grouped_mm has no float64
    assert Experts(2, 8, 8, backend="grouped").double().active_backend == "grouped"  # an explicit choice stays
    odd = Experts(2, 5, 7)  # widths not 16-byte aligned
    assert odd.to(torch.bfloat16).active_backend == "loop"
    with torch.device("meta"):
        meta = Experts(2, 8, 8).to(torch.bfloat16)
    assert meta.active_backend == "grouped"
    meta.load_state_dict(Experts(2, 8, 8).state_dict(), assign=True)  # float32 CPU weights replace the meta ones
    assert meta.active_backend == "loop"
    # under torch.autocast the experts run in the autocast dtype, with that dtype's backend
    assert ex.float().backend_for(torch.bfloat16, torch.device("cpu")) == "grouped"
    with pytest.raises(ValueError, match="backend='grouped' needs"):
        Experts(2, 5, 7, backend="grouped")(torch.zeros(1, 5), torch.tensor([1, 0]))


def test_bf16_grouped_forward_close_to_float32():
    ex = Experts(3, 16, 32)
    x, counts = grouped_input(3, [4, 4, 4], 16)
    ref = ex(x, counts)
    y = ex.to(torch.bfloat16)(x.bfloat16(), counts)
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), ref, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("args, match", [
    ((0, 4, 4), "num_experts must be >= 1"),
    ((2, 4, 0), "hidden must be >= 1"),
])
def test_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        Experts(*args)


def test_bad_kind_and_backend():
    with pytest.raises(ValueError, match="expert must be one of"):
        Experts(2, 4, 4, kind="tanh")
    with pytest.raises(ValueError, match="backend must be one of"):
        Experts(2, 4, 4, backend="cuda")
