"""Clear errors (or working paths) for inputs that used to end in a traceback deep inside the layer (issue 19)."""

import pytest
import torch

from smoe import MoE
from smoe.experts import Experts


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("router", ["topk", "expert_choice"])  # the dispatcher's factor, or the router's own
def test_a_non_finite_capacity_factor_is_refused_in_the_constructor(value, router):
    with pytest.raises(ValueError, match=f"capacity_factor must be a finite number, got {value}"):
        MoE(8, 4, 16, router=router, capacity_factor=value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_an_input_of_another_dtype_names_both(dtype):
    with pytest.raises(ValueError, match=rf"x has dtype {dtype} and the layer's weights torch.float32"):
        MoE(8, 4, 16)(torch.randn(3, 8, dtype=dtype))


@pytest.mark.parametrize("backend", ["auto", "loop", "grouped"])
@pytest.mark.parametrize("num_shared_experts", [0, 1])
def test_cpu_autocast_bfloat16_runs_as_autocast_would(backend, num_shared_experts):
    torch.manual_seed(0)
    m = MoE(16, 4, 32, backend=backend, num_shared_experts=num_shared_experts)
    x = torch.randn(2, 5, 16)
    reference = m(x).y
    with torch.autocast("cpu", torch.bfloat16):
        out = m(x)
    assert out.y.dtype == torch.bfloat16 and out.y.shape == x.shape
    torch.testing.assert_close(out.y.float(), reference, atol=0.05, rtol=0.05)
    out.y.float().sum().backward()
    assert m.experts.w_in.grad.dtype == torch.float32 and torch.isfinite(m.experts.w_in.grad).all()


def test_more_experts_than_memory_is_an_error_before_allocating():
    with pytest.raises(ValueError, match=r"num_experts=10000000 experts .* need [\d,.]+ GiB, more than the"):
        MoE(64, 10_000_000, 128)
    with pytest.raises(ValueError, match=r"num_experts=10000000 experts .* GiB"):
        Experts(10_000_000, 64, 128)
