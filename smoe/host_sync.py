"""Which operators make the host wait for the device: `OpRecorder`, a TorchDispatchMode that sees every ATen
operator a call dispatches (forward and backward) on any device, the CPU included.

It flags a host read of device data (`.item()`, `int()`, `float()`, `bool()` of a tensor), an output shape that
depends on the data (`nonzero`, `bincount`, `unique`, `masked_select`, boolean-mask indexing, `repeat_interleave`
without `output_size`) and a tensor built from host data (`torch.tensor(...)`: a host-to-device copy on a GPU).
On a GPU each one stalls the stream; under torch.compile each is a graph break. `.tolist()` reads the memory
without an operator, so it is not seen. `smoe check-router` and benchmarks/count_ops.py use it.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# operators that read device data on the host (a sync on a GPU, a graph break under torch.compile)
_READS_DATA = {aten._local_scalar_dense, aten.equal, aten.is_nonzero}
# operators whose output shape depends on the data (the device must report the size before the host goes on)
_DATA_SHAPED = {aten.nonzero, aten.masked_select, aten.bincount, aten._unique, aten._unique2, aten.unique_dim,
                aten.unique_consecutive, aten.unique_dim_consecutive}
_INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def sync_kind(func, args, kwargs) -> str | None:
    """Why the operator `func` called with (args, kwargs) waits for the device, or None when it does not."""
    packet = func.overloadpacket
    if packet in _READS_DATA:
        return "host read"
    if packet in _DATA_SHAPED:
        return "data-dependent shape"
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return "data-dependent shape"
    if packet in _INDEXING and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                   for i in (args[1] or ())):
        return "data-dependent shape"
    if packet is aten.lift_fresh:
        return "tensor from host data"
    return None


class OpRecorder(TorchDispatchMode):
    """Within `with OpRecorder() as rec:`, rec.ops counts every ATen operator dispatched (by overload packet) and
    rec.syncs lists (operator, kind) for those `sync_kind` flags."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func.overloadpacket)] += 1
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            self.syncs.append((str(func), kind))
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())
