"""Operators dispatched per MoE layer call, and the host-synchronising ones among them (CPU, no timing).

    python benchmarks/count_ops.py [--tokens 256] [--experts 8]

One forward + backward of `smoe.MoE` (d = 64, h = 128, k = 2, float32, backend="grouped", train mode; sinkhorn
and ssr in eval mode) per router on B = 4 sequences, dropless, with capacity factor 1.25, and dropless with the
last quarter of the first sequence masked (padding). `smoe.host_sync.OpRecorder` counts every ATen operator the
call dispatches (forward and backward: a proxy for kernel launches on a GPU) and lists those that make the host wait
for the device: a host read of device data (`.item()`, `int()`, `float()`, `bool()` of a tensor), an output
shape that depends on the data (`nonzero`, `bincount`, `unique`, `masked_select`, boolean-mask indexing,
`repeat_interleave` without `output_size`), or a tensor built from host data (`torch.tensor(...)`: a
host-to-device copy on a GPU). `.tolist()` reads the memory without an operator, so it is not seen here (the
loop backend's one `counts.tolist()` is the only one left in the layer). The script only uses `MoE`'s public
arguments, so it measures any version of the library: the table in docs/benchmarks.md compares the code before
and after issue 17. tests/test_host_sync.py uses `OpRecorder` to require zero such operators.
"""

from __future__ import annotations

import argparse
import sys

import torch

from smoe import MoE
from smoe.host_sync import OpRecorder

# router name -> (options, train mode); ssr / sinkhorn are measured in eval mode (Sinkhorn iterates in training)
ROUTERS = {
    "topk": ({}, True),
    "deepseek": ({}, True),
    "expert_choice": ({}, True),
    "xmoe": ({}, True),
    "vmoe": ({"batch_priority": "always", "group_size": 64}, True),
    "usmoe": ({}, True),
    "hash": ({"vocab_size": 100}, True),
    "sinkhorn": ({}, False),
    "ssr": ({}, False),
}
SETTINGS = ("dropless", "capacity 1.25", "dropless, masked")


def layer_call(router: str, setting: str, tokens: int = 256, experts: int = 8, seq_len: int = 64,
               dtype: torch.dtype = torch.float32, **layer_options):
    """(layer, call): `call()` runs one forward + backward of the layer in `setting` (one of SETTINGS);
    layer_options: further `MoE` arguments."""
    options, train = ROUTERS[router]
    torch.manual_seed(0)
    capacity = 1.25 if setting.startswith("capacity") else None
    layer = MoE(64, experts, 128, router=router, k=2, capacity_factor=capacity, backend="grouped",
                **options, **layer_options).to(dtype).train(train)
    x = torch.randn(tokens // seq_len, seq_len, 64, dtype=dtype, requires_grad=True)
    mask = None
    if setting.endswith("masked"):
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        mask[0, -seq_len // 4:] = False
    ids = torch.randint(0, 100, x.shape[:2])
    context = {"token_ids": ids} if router == "hash" else {}

    def call():
        out = layer(x, mask, generator=torch.Generator().manual_seed(1), **context)
        (out.y.float().square().mean() + out.aux_loss).backward()
        return out

    return layer, call


def count(router: str, setting: str, **options) -> OpRecorder:
    """The operators of one forward + backward (`layer_call`'s options), after a warm-up call outside the
    recorder."""
    _, call = layer_call(router, setting, **options)
    call()
    with OpRecorder() as rec:
        call()
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256, help="tokens per call, in sequences of 64 (default 256)")
    p.add_argument("--experts", type=int, default=8, help="E (default 8)")
    p.add_argument("--verbose", action="store_true", help="also list each flagged operator")
    args = p.parse_args(argv)
    print(f"N={args.tokens} d=64 h=128 E={args.experts} k=2 float32 cpu backend=grouped, one forward + backward")
    print("| router | " + " | ".join(f"{s}: ops / syncs" for s in SETTINGS) + " |")
    print("|---|" + "---|" * len(SETTINGS))
    for router in ROUTERS:
        cells = []
        for setting in SETTINGS:
            rec = count(router, setting, tokens=args.tokens, experts=args.experts)
            cells.append(f"{rec.total} / {len(rec.syncs)}")
            if args.verbose and rec.syncs:
                print(f"  {router} [{setting}]: " + ", ".join(f"{op} ({kind})" for op, kind in rec.syncs),
                      file=sys.stderr)
        print(f"| {router} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
