"""Layer benchmark: forward + backward time and peak memory of the MoE layer against its baselines and peers.

Time: for each E, one fresh subprocess builds every (impl, router) row, warms each up, then runs `repeats`
rounds of one step of every row in turn and reports each row's median. Interleaving matters on a shared or
throttled machine, where the speed drifts by 10-30 % over minutes: rows timed minutes apart in separate
processes would compare the machine's moods, not the code. Each round starts one row later, because a row that
runs right after a memory-hungry one (einsum) pays for fresh pages: with a fixed order the first row always did.
Memory: every (impl, E) in its own fresh subprocess, peak over one step after a warm-up: the resident-set
high-water mark (reset with /proc/self/clear_refs after the warm-up) minus the resident set at that point, with
glibc told to return every block over 64 KiB to the system (MALLOC_MMAP_THRESHOLD_) so that freed tensors do
not linger in the figure. On CUDA: the allocator's peak over
its allocation after set-up. Both are real measurements, not estimates.

Modules are timed in train mode (router noise, Sinkhorn on training calls). --router takes one or more
comma-separated specs `name[:option=value...]`, e.g. `topk,ssr,ssr:p=1.0,sinkhorn`; the smoe rows run once per
spec and every ratio is against the first spec's smoe row. A spec's options may also be the MoE layer's own
keyword arguments: `topk:backend=grouped` (the grouped_mm experts), `topk:capacity_factor=1.25`. SSR's expected
step time is (1 - p) t(ssr:p=0) + p t(ssr:p=1) (its median over a few steps at small p is the softmax branch).

The smoe rows see x as sequences of T tokens (--seq-len), which matters only for routers that pool over a
sequence (similarity, attention, usmoe); routers that read attention probabilities get fixed random ones.

impls:
  smoe          smoe.build_moe (router per --router spec, default topk k=2, SwiGLU, dropless; s2moe is its layer)
  smoe-uniform  the same layer with routing forced to a perfectly balanced round robin
  experts-only  smoe's Experts alone on the grouped rows the smoe router produced (the floor for that routing)
  dense         a SwiGLU FFN with the same active FLOPs (hidden = k * h)
  hf-eager      transformers' MixtralSparseMoeBlock, eager experts
  hf-grouped_mm transformers' MixtralSparseMoeBlock, grouped_mm experts
  einsum        GShard-style one-hot dispatch / combine einsums with capacity factor 1.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe import MoEConfig, build_moe
from smoe.bench import write_json
from smoe.layer import available_layers
from smoe.routing import Routing, available_routers, router_options
from smoe.routing.registry import parse_router_spec

IMPLS = ("smoe", "smoe-uniform", "experts-only", "dense", "hf-eager", "hf-grouped_mm", "einsum")
ROUTED = ("smoe", "experts-only")  # the impls that run once per --router spec (smoe-uniform replaces the router)
FULL = {"N": 8192, "T": 512, "d": 512, "h": 1024, "k": 2, "experts": (8, 32, 64)}
LAYER_SIZE_ARGUMENTS = ("d_model", "num_experts", "hidden", "router", "router_options", "method",
                        "method_options")  # set by the benchmark
QUICK = {"N": 512, "T": 128, "d": 64, "h": 128, "k": 2, "experts": (4, 8)}


# ---------------------------------------------------------------- implementations (each: x -> y)

class DenseSwiGLU(nn.Module):
    """The dense ceiling: one SwiGLU FFN of hidden k*h (same active FLOPs as the MoE)."""
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(d, 2 * hidden) / math.sqrt(d))
        self.w_out = nn.Parameter(torch.randn(hidden, d) / math.sqrt(hidden))

    def forward(self, x: Tensor) -> Tensor:
        gate, up = (x @ self.w_in).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.w_out


class EinsumMoE(nn.Module):
    """GShard-style top-2 MoE: dense (N, E, C) dispatch/combine tensors and einsums, capacity factor 1.25."""
    def __init__(self, d: int, num_experts: int, hidden: int, k: int, capacity_factor: float = 1.25):
        super().__init__()
        self.k, self.capacity_factor = k, capacity_factor
        self.gate = nn.Linear(d, num_experts, bias=False)
        self.w_in = nn.Parameter(torch.randn(num_experts, d, 2 * hidden) / math.sqrt(d))
        self.w_out = nn.Parameter(torch.randn(num_experts, hidden, d) / math.sqrt(hidden))

    def forward(self, x: Tensor) -> Tensor:
        n, e = x.shape[0], self.w_in.shape[0]
        cap = math.ceil(self.capacity_factor * n * self.k / e)
        probs = torch.softmax(self.gate(x).float(), -1)
        weight, index = probs.topk(self.k, dim=-1)
        weight = weight / weight.sum(-1, keepdim=True)
        onehot = F.one_hot(index, e).to(x.dtype)  # (N, k, E)
        position = (torch.cumsum(onehot.transpose(0, 1).reshape(-1, e), 0).reshape(self.k, n, e) - 1).transpose(0, 1)
        keep = onehot * (position < cap)
        slot = F.one_hot((position * keep).sum(-1).long(), cap).to(x.dtype)  # (N, k, C)
        dispatch = torch.einsum("nke,nkc->nec", keep, slot)
        combine = torch.einsum("nke,nkc,nk->nec", keep, slot, weight.to(x.dtype))
        xe = torch.einsum("nec,nd->ecd", dispatch, x)
        gate, up = torch.bmm(xe, self.w_in).chunk(2, dim=-1)
        ye = torch.bmm(F.silu(gate) * up, self.w_out)
        return torch.einsum("nec,ecd->nd", combine, ye)


def hf_mixtral_block(d: int, num_experts: int, hidden: int, k: int, implementation: str) -> nn.Module:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=d, intermediate_size=hidden, num_local_experts=num_experts,
                           num_experts_per_tok=k, experts_implementation=implementation)
    block = MixtralSparseMoeBlock(config)
    for p in block.parameters():
        nn.init.normal_(p, std=1 / math.sqrt(p.shape[-1]))
    return block


def build(impl: str, size: dict, num_experts: int, router: str, x: Tensor) -> tuple[Callable[[], Tensor], nn.Module]:
    """A zero-argument callable computing the impl's output on x, and the module holding its weights.

    router: a spec `name[:option=value...]` for the smoe impls.
    """

    d, h, k = size["d"], size["h"], size["k"]
    place = {"device": x.device, "dtype": x.dtype}
    if impl in ("smoe", "smoe-uniform", "experts-only"):
        name, options = parse_router_spec(router)
        moe = build_moe(d, num_experts, h, router=name, k=k, **options).to(**place)
        seqs = x.view(-1, size["T"], d)
        context = {"attn_probs": _attention_probs(seqs)} if moe.router.needs_attn_probs else {}

        def run() -> Tensor:
            return moe(seqs, **context).y.view(-1, d)

        if impl == "smoe":
            return run, moe
        if impl == "smoe-uniform":
            n = x.shape[0]

            def uniform_forward(xf, ctx):
                token = torch.arange(n).repeat_interleave(k)
                expert = torch.arange(n * k) % num_experts
                return Routing(token=token.to(x.device), expert=expert.to(x.device),
                               weight=torch.full((n * k,), 1.0 / k, device=x.device),
                               probs=torch.full((n, num_experts), 1.0 / num_experts, device=x.device),
                               num_experts=num_experts)

            moe.router.forward = uniform_forward
            return run, moe
        with torch.no_grad():
            plan = moe.dispatcher.plan(moe(seqs, **context).routing)
        rows = x.detach()[plan.token].clone().requires_grad_()

        def run_experts() -> Tensor:
            rows.grad = None
            return moe.experts(rows, plan.counts)

        return run_experts, moe.experts
    if impl == "dense":
        m = DenseSwiGLU(d, k * h).to(**place)
        return (lambda: m(x)), m
    if impl in ("hf-eager", "hf-grouped_mm"):
        m = hf_mixtral_block(d, num_experts, h, k, impl.removeprefix("hf-")).to(**place)
        return (lambda: m(x.unsqueeze(0)).squeeze(0)), m
    if impl == "einsum":
        m = EinsumMoE(d, num_experts, h, k).to(**place)
        return (lambda: m(x)), m
    raise ValueError(f"unknown impl {impl!r}; choose from {', '.join(IMPLS)}")


def _attention_probs(seqs: Tensor) -> Tensor:
    """(B, T, T) fixed random attention probabilities for routers that read the preceding attention."""
    b, t, _ = seqs.shape
    return torch.softmax(torch.randn(b, t, t, device=seqs.device), dim=-1)


# ---------------------------------------------------------------- measurement (runs in the worker process)

def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _step_fn(impl: str, size: dict, num_experts: int, router: str, device: str, dtype: str) -> Callable[[], None]:
    """One forward + backward of the impl on fixed random x and output gradient (gradients freed first)."""
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    x = torch.randn(size["N"], size["d"], device=device, dtype=dt, requires_grad=True)
    fn, module = build(impl, size, num_experts, router, x)
    with torch.no_grad():
        grad = torch.randn(fn().shape, device=device, dtype=dt)  # one fixed output gradient for every run
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        fn().backward(grad)
        sync()

    return step


def measure_memory(impl: str, size: dict, num_experts: int, router: str, device: str, dtype: str) -> dict:
    """Peak memory (MB) of one step after a warm-up, over what the process held before it."""
    step = _step_fn(impl, size, num_experts, router, device, dtype)
    step()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_mb("VmRSS")
    step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mb("VmHWM")
    return {"peak_mb": peak - base}


def measure_times(rows: list[tuple[str, str]], size: dict, num_experts: int, repeats: int, device: str,
                  dtype: str) -> list[dict]:
    """Median step time of every (impl, router) row at one E, timed in interleaved rounds in this process.

    A row that fails to build or run becomes a record with `error`; the others go on.
    """
    steps: dict[int, Callable[[], None]] = {}
    records = []
    for i, (impl, router) in enumerate(rows):
        records.append({"impl": impl, "E": num_experts, "k": size["k"], "N": size["N"], "T": size.get("T"),
                        "d": size["d"], "h": size["h"], "router": router if impl in ROUTED else None,
                        "dtype": dtype, "device": device, "threads": torch.get_num_threads(), "runs_s": []})
        try:
            steps[i] = _step_fn(impl, size, num_experts, router, device, dtype)
            steps[i]()  # warm-up
        except Exception as err:  # a failing row is reported, the benchmark goes on
            steps.pop(i, None)
            records[i]["error"] = f"{type(err).__name__}: {err}"
    order = list(steps)
    for r in range(repeats):  # each round starts one row later: no row always follows the same (memory-hungry) one
        for i in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            steps[i]()
            records[i]["runs_s"].append(time.perf_counter() - t0)
    for rec in records:
        if "error" not in rec:
            rec["median_s"], rec["mean_s"] = statistics.median(rec["runs_s"]), statistics.mean(rec["runs_s"])
    return records


# ---------------------------------------------------------------- driver

def _worker(spec: dict, env: dict, timeout: float) -> dict | list:
    """Run `spec` in a fresh `smoe.bench.layer --worker` process; its last stdout line (JSON), or {"error"}."""
    cmd = [sys.executable, "-m", "smoe.bench.layer", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_rows(rows: list[tuple[str, str]], size: dict, num_experts: int, repeats: int, device: str,
             dtype: str, timeout: float) -> list[dict]:
    """Every row at one E: times from one interleaved process, then each row's peak memory from its own."""
    spec = {"mode": "time", "rows": rows, "size": size, "E": num_experts, "repeats": repeats, "device": device,
            "dtype": dtype}
    timed = _worker(spec, os.environ.copy(), timeout * len(rows))
    if isinstance(timed, dict):  # the whole process failed
        return [{"impl": impl, "E": num_experts, "router": router if impl in ROUTED else None, **timed}
                for impl, router in rows]
    memory_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for rec, (impl, router) in zip(timed, rows):
        if "error" not in rec:
            spec = {"mode": "memory", "impl": impl, "router": router, "size": size, "E": num_experts,
                    "device": device, "dtype": dtype}
            rec.update(_worker(spec, memory_env, timeout))
    return timed


def row_label(record: dict) -> str:
    """The impl, with its router spec for the impls that run per router: "smoe [ssr:p=1.0]"."""
    return f"{record['impl']} [{record['router']}]" if record.get("router") else record["impl"]


def _milliseconds(seconds: float) -> str:
    """4 significant digits, never in exponent notation: 3.351, 1232, 11795."""
    ms = 1000 * seconds
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.4g}"


def markdown_table(records: list[dict], reference: str | None = None) -> str:
    """One row per (E, impl, router): median time, peak memory, and the reference's time divided by this row's.

    reference: a row label; default the first smoe row's ("smoe [topk]" for the default --router).
    """
    if reference is None:
        reference = next((row_label(r) for r in records if r["impl"] == "smoe"), "smoe")
    lines = [f"| E | impl | median fwd+bwd (ms) | peak mem (MB) | {reference} ÷ this |", "|---|---|---|---|---|"]
    ref = {r["E"]: r["median_s"] for r in records if row_label(r) == reference and "median_s" in r}
    order = {label: i for i, label in enumerate(dict.fromkeys(row_label(r) for r in records))}
    for r in sorted(records, key=lambda r: (r["E"], IMPLS.index(r["impl"]) if r["impl"] in IMPLS else 99,
                                            order[row_label(r)])):
        if "error" in r:
            lines.append(f"| {r['E']} | {row_label(r)} | error: {r['error']} | | |")
            continue
        ratio = ref.get(r["E"], float("nan")) / r["median_s"]
        time_ms = _milliseconds(r["median_s"])
        lines.append(f"| {r['E']} | {row_label(r)} | {time_ms} | {r['peak_mb']:.0f} | {ratio:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="smoe bench layer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small sizes for CI: {QUICK}")
    p.add_argument("--experts", type=str, default=None, help="comma-separated E values (default 8,32,64)")
    p.add_argument("--impls", type=str, default=",".join(IMPLS), help="comma-separated subset of the impls")
    p.add_argument("--router", type=str, default="topk",
                   help="comma-separated router specs name[:option=value...] of the smoe rows (default topk)")
    p.add_argument("--tokens", type=int, default=None, help="override N")
    p.add_argument("--seq-len", type=int, default=None, help="override T, the tokens per sequence (N = B * T)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (median reported)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds per row (impl, router) and E before giving up")
    p.add_argument("--json", type=str, default=None, help="write the records to this JSON file")
    p.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec["mode"] == "time":
            out = measure_times([tuple(r) for r in spec["rows"]], spec["size"], spec["E"], spec["repeats"],
                                spec["device"], spec["dtype"])
        else:
            out = measure_memory(spec["impl"], spec["size"], spec["E"], spec["router"], spec["device"],
                                 spec["dtype"])
        print(json.dumps(out))
        return 0

    # the layer's own keyword arguments are accepted in a spec too: topk:backend=grouped, topk:capacity_factor=1.25
    layer_options = [f.name for f in dataclasses.fields(MoEConfig) if f.name not in LAYER_SIZE_ARGUMENTS]
    routers = [r.strip() for r in args.router.split(",") if r.strip()]
    for spec in routers:
        try:
            name, options = parse_router_spec(spec)
        except ValueError as err:
            raise SystemExit(f"--router: {err}") from None
        names = sorted(available_routers() + available_layers())
        if name not in names:
            raise SystemExit(f"--router: unknown router {name!r}; available: {', '.join(names)}")
        if name not in available_routers():
            continue  # a layer-level method (s2moe): its options are checked when it is built
        valid = (set(router_options(name)) | set(layer_options)) - {"k"}  # k is the benchmark size's
        unknown = sorted(set(options) - valid)
        if unknown:
            raise SystemExit(f"--router: unknown option(s) {unknown} for {name!r}; valid: {', '.join(sorted(valid))}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        raise SystemExit(f"--impls: unknown {unknown}; choose from {', '.join(IMPLS)}")
    size = dict(QUICK if args.quick else FULL)
    if args.tokens:
        size["N"] = args.tokens
    if args.seq_len:
        size["T"] = args.seq_len
    size["T"] = min(size["T"], size["N"])
    if size["N"] % size["T"]:
        raise SystemExit(f"--seq-len: T={size['T']} must divide N={size['N']}")
    experts = [int(e) for e in args.experts.split(",")] if args.experts else list(size.pop("experts"))
    size.pop("experts", None)
    from tqdm import tqdm

    records = []
    rows = [(impl, router) for impl in impls for router in (routers if impl in ROUTED else routers[:1])]
    for e in tqdm(experts, desc="bench layer", unit="E", file=sys.stderr):
        records += run_rows(rows, size, e, args.repeats, args.device, args.dtype, args.timeout)
    print(f"N={size['N']} T={size['T']} d={size['d']} h={size['h']} k={size['k']} {args.dtype} {args.device} "
          f"routers={','.join(routers)} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(markdown_table(records))
    write_json(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
