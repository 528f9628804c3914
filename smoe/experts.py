"""Experts: all E expert MLPs stacked in a few parameters, run over rows grouped by expert.

Legend: E experts, A rows (grouped by expert, `counts[e]` rows for expert e, then padding rows past counts.sum()
whose outputs are left unspecified: the dispatcher zeroes them), d model width, h hidden width.
Weights: w_in (E, d, h) -- (E, d, 2h) for SwiGLU, gate and up fused -- and w_out (E, h, d).

Two backends compute the same function:
- "grouped": `torch.nn.functional.grouped_mm` (float32/bfloat16/float16, widths aligned to 16 bytes);
- "loop": one matmul per expert, forward and backward (a custom autograd function that writes each expert's
  weight gradient in place; indexing `w[e]` under autograd would write a full-size gradient per expert, and
  `unbind` views would copy all of them once more when stacking). Every expert runs, even with zero rows, so
  the weight gradients are complete whatever the routing did.
"auto" takes "loop" on CPU in float32 (measured faster there, docs/benchmarks.md) and "grouped" wherever
grouped_mm supports the dtype, device and shapes; "loop" otherwise (e.g. float64). The choice (`active_backend`) is
made once, at construction, and again whenever the weights change dtype or device (`.to()`, `.half()`, loading a
state dict with assign=True), never per call; under torch.autocast the experts run in the autocast dtype, and the
backend is the one for that dtype.
"grouped" never waits for the device and compiles with torch.compile(fullgraph=True) (in bfloat16: torch 2.13's
fake-tensor rule of grouped_mm accepts no other dtype); "loop" reads the E group sizes on the host once per
call, and torch.compile runs it eagerly (a graph break).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_choice, check_int, check_memory
from smoe.init import ParamGenerators, global_rng

EXPERT_KINDS = ("swiglu", "gelu", "relu")
BACKENDS = ("auto", "grouped", "loop")
_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    grouped_mm's backward rejects expanded (stride-0) gradients such as the gradient of `y.sum()`.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def _grouped_mm(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    return _ContiguousGrad.apply(F.grouped_mm(x, w, offs=offsets))


@functools.cache
def _grouped_mm_device(device: torch.device) -> bool:
    """Whether grouped_mm runs on this CUDA device (compute capability 8.0 or newer); asked once per device."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def activate(kind: str, pre: Tensor) -> Tensor:
    """The hidden nonlinearity of an expert: pre (M, W) -> (M, h); silu(gate) * up for SwiGLU (W = 2h)."""
    if kind == "swiglu":
        gate, up = pre.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(pre) if kind == "gelu" else F.relu(pre)


def activate_backward(kind: str, pre: Tensor, grad_act: Tensor) -> tuple[Tensor, Tensor]:
    """(gradient w.r.t. pre (M, W), the activation (M, h)) from the incoming gradient grad_act: (M, h).

    The activation is recomputed from pre (never stored between forward and backward).
    """
    if kind == "swiglu":
        gate, up = pre.chunk(2, dim=-1)
        silu = F.silu(gate)
        grad_pre = torch.empty_like(pre)
        grad_gate, grad_up = grad_pre.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad_act * up, gate, grad_input=grad_gate)
        torch.mul(grad_act, silu, out=grad_up)
        return grad_pre, silu * up
    if kind == "gelu":
        return torch.ops.aten.gelu_backward(grad_act, pre), F.gelu(pre)
    return torch.ops.aten.threshold_backward(grad_act, pre, 0), F.relu(pre)


class _ExpertLoop(torch.autograd.Function):
    """One matmul per expert, forward and backward, writing into preallocated stacked tensors.

    Autograd through `unbind` views would stack E per-expert weight gradients into a new tensor in the
    backward (a full copy of the expert weights); here each expert's gradient is written in place, and the
    activation's backward is computed directly (`activate_backward`) from the saved pre-activations.
    x: (A, d) grouped rows, w_in: (E, d, W), w_out: (E, h, d), b_in: (E, W) or None, b_out: (E, d) or None.
    """

    @staticmethod
    def forward(ctx, x, w_in, w_out, b_in, b_out, sizes, kind):
        bounds = _bounds(sizes)
        y = x.new_empty(x.shape[0], w_out.shape[2])
        pre = []  # per-expert pre-activations: smaller blocks are reused by the allocator, one big one is not
        for e, (lo, hi) in enumerate(bounds):
            pre.append(_linear(x[lo:hi], w_in[e], None if b_in is None else b_in[e]))
            _linear(activate(kind, pre[e]), w_out[e], None if b_out is None else b_out[e], out=y[lo:hi])
        ctx.save_for_backward(x, w_in, w_out, *pre)
        ctx.bounds, ctx.kind = bounds, kind
        ctx.has_bias = (b_in is not None, b_out is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, w_in, w_out, *pre = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        grad_w_in, grad_w_out, grad_x = torch.empty_like(w_in), torch.empty_like(w_out), torch.empty_like(x)
        grad_b_in = w_in.new_empty(w_in.shape[0], w_in.shape[2]) if ctx.has_bias[0] else None
        for e, (lo, hi) in enumerate(ctx.bounds):
            grad_pre, act = activate_backward(ctx.kind, pre[e], grad_y[lo:hi] @ w_out[e].t())
            torch.mm(act.t(), grad_y[lo:hi], out=grad_w_out[e])
            torch.mm(x[lo:hi].t(), grad_pre, out=grad_w_in[e])
            torch.mm(grad_pre, w_in[e].t(), out=grad_x[lo:hi])
            if grad_b_in is not None:
                torch.sum(grad_pre, 0, out=grad_b_in[e])
        grad_b_out = torch.stack([grad_y[lo:hi].sum(0) for lo, hi in ctx.bounds]) if ctx.has_bias[1] else None
        return grad_x, grad_w_in, grad_w_out, grad_b_in, grad_b_out, None, None


@torch.compiler.disable  # a Python loop over the host-side group sizes: run eagerly, not traced per size
def _loop(x: Tensor, counts: Tensor, w_in: Tensor, w_out: Tensor, b_in: Tensor | None, b_out: Tensor | None,
          kind: str) -> Tensor:
    return _ExpertLoop.apply(x, w_in, w_out, b_in, b_out, counts.tolist(), kind)


def _linear(a: Tensor, w: Tensor, b: Tensor | None, out: Tensor | None = None) -> Tensor:
    """a @ w (+ b), written into out when given."""
    if b is None:
        return torch.mm(a, w, out=out)
    return torch.addmm(b, a, w, out=out)


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    out, lo = [], 0
    for n in sizes:
        out.append((lo, lo + n))
        lo += n
    return out


def check_expert_sizes(num_experts: int, d_model: int, hidden: int, kind: str = "swiglu", bias: bool = False) -> None:
    """Validate the sizes of E experts and refuse, before allocating, weights that could not be trained in the
    device's memory (weights and gradients larger than it)."""
    check_int("num_experts", num_experts, low=1)
    check_int("d_model", d_model, low=1)
    check_int("hidden", hidden, low=1)
    check_choice("expert", kind, EXPERT_KINDS)
    width = 2 * hidden if kind == "swiglu" else hidden
    numel = num_experts * (d_model * width + hidden * d_model + (width + d_model if bias else 0))
    check_memory(f"the weights of num_experts={num_experts} experts (d_model={d_model}, hidden={hidden}, {kind}) "
                 "and their gradients", 2 * numel * torch.get_default_dtype().itemsize)


class Experts(nn.Module):
    """E expert MLPs (SwiGLU, or a GELU/ReLU MLP), optional biases, grouped or looped computation."""

    def __init__(self, num_experts: int, d_model: int, hidden: int, kind: str = "swiglu", bias: bool = False,
                 backend: str = "auto"):
        super().__init__()
        check_expert_sizes(num_experts, d_model, hidden, kind, bias)
        check_choice("backend", backend, BACKENDS)
        self.num_experts, self.d_model, self.hidden = num_experts, d_model, hidden
        self.kind, self.backend = kind, backend
        width = 2 * hidden if kind == "swiglu" else hidden
        self.w_in = nn.Parameter(torch.empty(num_experts, d_model, width))
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.b_in = nn.Parameter(torch.empty(num_experts, width)) if bias else None
        self.b_out = nn.Parameter(torch.empty(num_experts, d_model)) if bias else None
        self.reset_parameters()
        self.active_backend = self.backend_for(self.w_in.dtype, self.w_in.device)

    def reset_parameters(self, generators: ParamGenerators = global_rng) -> None:
        """Each expert initialised like nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); parameter `name` drawn from
        generators(name) (`smoe.init`; default: the global generator)."""
        for w_name, b_name in (("w_in", "b_in"), ("w_out", "b_out")):
            w, b = getattr(self, w_name), getattr(self, b_name)
            bound = 1 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound, generator=generators(w_name))
            if b is not None:
                nn.init.uniform_(b, -bound, bound, generator=generators(b_name))

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, d_model={self.d_model}, hidden={self.hidden}, kind={self.kind}, "
                f"bias={self.b_in is not None}, backend={self.backend}")

    def activation(self, h: Tensor) -> Tensor:
        """The hidden nonlinearity: silu(gate) * up for SwiGLU, else gelu/relu."""
        return activate(self.kind, h)

    def backend_for(self, dtype: torch.dtype, device: torch.device) -> str:
        """The backend that runs inputs and weights of `dtype` on `device`: `backend` unless it is "auto"."""
        if self.backend != "auto":
            return self.backend
        if not self.grouped_supported(dtype, device) or (device.type == "cpu" and dtype == torch.float32):
            return "loop"
        return "grouped"

    def grouped_supported(self, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether grouped_mm accepts this dtype, device and these widths (rows must be 16-byte aligned)."""
        if not hasattr(F, "grouped_mm") or dtype not in _GROUPED_DTYPES:
            return False
        if device.type == "cuda" and not _grouped_mm_device(device):
            return False
        align = 16 // (torch.finfo(dtype).bits // 8)
        return all(n % align == 0 for n in (self.d_model, self.hidden, self.w_in.shape[2]))

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.active_backend = self.backend_for(self.w_in.dtype, self.w_in.device)
        return out

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # with assign=True the weights may change dtype or device
        self.active_backend = self.backend_for(self.w_in.dtype, self.w_in.device)

    def forward(self, x: Tensor, counts: Tensor) -> Tensor:
        """x: (A, d) rows grouped by expert, counts: (E,) rows per expert -> (A, d) (rows past counts.sum():
        unspecified).

        Under torch.autocast on x's device, rows and weights are cast to the autocast dtype (as nn.Linear's are)
        and the experts run in it with autocast off (the loop writes into tensors of that dtype).
        """
        weights = (self.w_in, self.w_out, self.b_in, self.b_out)
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return self._run(self.backend_for(dtype, x.device), x.to(dtype), counts,
                                 *(None if w is None else w.to(dtype) for w in weights))
        return self._run(self.active_backend, x, counts, *weights)

    def _run(self, backend: str, x: Tensor, counts: Tensor, w_in: Tensor, w_out: Tensor, b_in: Tensor | None,
             b_out: Tensor | None) -> Tensor:
        if backend == "loop":
            return _loop(x, counts, w_in, w_out, b_in, b_out, self.kind)
        if x.dtype != w_in.dtype or not self.grouped_supported(w_in.dtype, w_in.device):
            raise ValueError(f"backend='grouped' needs float32/bfloat16/float16 weights and inputs of one dtype "
                             f"with widths aligned to 16 bytes; got x {x.dtype}, w_in {w_in.dtype}")
        offsets = torch.cumsum(counts, 0).to(torch.int32)
        h = _grouped_mm(x, w_in, offsets)
        if b_in is not None:  # (b_out too) each row's expert; padding rows get the last one
            expert = torch.searchsorted(offsets, torch.arange(x.shape[0], device=x.device, dtype=torch.int32),
                                        right=True).clamp_max(self.num_experts - 1)
            h = h + b_in[expert]
        y = _grouped_mm(self.activation(h), w_out, offsets)
        return y if b_out is None else y + b_out[expert]

    def dense_forward(self, x: Tensor, expert: int) -> Tensor:
        """Expert `expert` applied to every row of x: (M, d) -> (M, d) (a reference for tests and analyses)."""
        h = x @ self.w_in[expert]
        if self.b_in is not None:
            h = h + self.b_in[expert]
        y = self.activation(h) @ self.w_out[expert]
        return y if self.b_out is None else y + self.b_out[expert]
