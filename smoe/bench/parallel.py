"""Expert-parallel benchmark: tokens/s of the MoE layer (forward + backward) and of the tiny LM's training step on
1 process and on W processes.

The global batch is fixed (N tokens for the layer; the lm-bbc tiny preset's batch for the LM); with W processes
each rank holds its share of it and E / W experts, and the processes share the machine's cores (`--threads` in
all, split evenly). A step is timed on every rank between two barriers; a rank's step time is its slowest
peer's, and tokens/s is the global batch over the median step time.

layer impls:
  moe    the single-process smoe.MoE (world size 1 only): the reference
  ep     smoe.parallel.ExpertParallelMoE: the router on each rank's tokens, experts sharded, all-to-all exchanges
LM impls (the Trainer's whole optimizer step on uniform random tokens: forward, backward, gradient sync, AdamW):
  lm     the single-process Trainer (world size 1 only): the reference
  lm-ep  the Trainer with data_parallel on W processes, experts sharded (torchrun's default)
  lm-dp  the same with expert parallelism off: every rank holds every expert (pure data parallelism)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from smoe import MoE
from smoe.bench import write_json
from smoe.bench.train import build_trainer
from smoe.expert_parallel import ExpertParallelMoE
from smoe.launch_local import LocalRunError, run_local
from smoe.routing import available_routers
from smoe.workbench.train.data_parallel import ParallelConfig

FULL = {"N": 8192, "d": 512, "h": 1024, "E": 8, "k": 2}
QUICK = {"N": 512, "d": 64, "h": 128, "E": 4, "k": 2}
IMPLS = ("moe", "ep")
LM_QUICK = ["train.batch_size=8", "data.seq_len=16"]  # the tiny preset otherwise (batch 32 x 64 tokens)


def measure(impl: str, size: dict, router: str, repeats: int) -> dict:
    """Runs on every rank of a local group: the median time of `repeats` steps after one warm-up."""
    import torch.distributed as dist


    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    layer = MoE(size["d"], size["E"], size["h"], router=router, k=size["k"])
    if impl == "ep":
        layer = ExpertParallelMoE.from_moe(layer)
    local_tokens = size["N"] // world_size
    x = torch.randn(local_tokens, size["d"], generator=torch.Generator().manual_seed(rank), requires_grad=True)
    grad = torch.randn(local_tokens, size["d"], generator=torch.Generator().manual_seed(100 + rank))

    def step() -> float:
        layer.zero_grad(set_to_none=True)
        dist.barrier()
        t0 = time.perf_counter()
        layer(x).y.backward(grad)
        dist.barrier()
        return time.perf_counter() - t0

    step()  # warm-up
    times = [step() for _ in range(repeats)]
    return {"impl": impl, "world_size": world_size, "threads": torch.get_num_threads(), "tokens": size["N"],
            "tokens_per_rank": local_tokens, **{k: size[k] for k in ("d", "h", "E", "k")}, "router": router,
            "median_s": statistics.median(times), "runs_s": times}


def measure_lm(impl: str, router: str, repeats: int, overrides: list[str]) -> dict:
    """Runs on every rank of a local group: the median time of `repeats` Trainer steps after one warm-up."""
    import tempfile

    import torch.distributed as dist


    parallel = None if impl == "lm" else ParallelConfig(expert_parallel="on" if impl == "lm-ep" else "off")
    with tempfile.TemporaryDirectory() as tmp:
        trainer, config = build_trainer("moe", "tiny", router, "cpu", tmp, overrides, parallel=parallel)
        batches = iter(trainer.train_batches(trainer.data_rng))

        def step() -> float:
            dist.barrier()
            t0 = time.perf_counter()
            trainer.train_step(batches)
            dist.barrier()
            return time.perf_counter() - t0

        step()  # warm-up
        times = [step() for _ in range(repeats)]
    return {"impl": impl, "world_size": dist.get_world_size(), "threads": torch.get_num_threads(),
            "tokens": trainer.config.batch_size * config.max_len, "d": config.d_model, "E": config.moe.num_experts,
            "k": config.moe.router_options.k, "layers": config.num_layers, "router": router,
            "median_s": statistics.median(times), "runs_s": times}


def markdown_table(records: list[dict], base_impl: str = "moe") -> str:
    """One row per (impl, world size): median step, tokens/s, and its ratio to base_impl on one process."""
    step = "fwd+bwd" if base_impl == "moe" else "train step"
    lines = [f"| impl | processes | threads each | median {step} (s) | tokens/s | ÷ {base_impl} on 1 process |",
             "|---|---|---|---|---|---|"]
    base = next((r["median_s"] for r in records if r["impl"] == base_impl and "median_s" in r), float("nan"))
    for r in records:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['world_size']} | | error: {r['error']} | | |")
            continue
        lines.append(f"| {r['impl']} | {r['world_size']} | {r['threads']} | {r['median_s']:.4f} | "
                     f"{r['tokens'] / r['median_s']:.0f} | {base / r['median_s']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="smoe bench parallel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small sizes for CI: {QUICK}")
    p.add_argument("--world-sizes", type=str, default="1,2",
                   help="comma-separated process counts for the ep, lm-ep and lm-dp rows")
    p.add_argument("--router", type=str, default="topk", help="router of the layer and the LM (default topk)")
    p.add_argument("--tokens", type=int, default=None, help="override the global batch N")
    p.add_argument("--experts", type=int, default=None, help="override E (divisible by every world size)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up (median reported)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="intra-op threads in all, split evenly over the processes (default: torch's)")
    p.add_argument("--no-lm", action="store_true", help="only the layer rows (no tiny-LM rows)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per row before giving up")
    p.add_argument("--json", type=str, default=None, help="write the records to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.router not in available_routers():
        raise SystemExit(f"--router: unknown router {args.router!r}; available: {', '.join(available_routers())}")
    size = dict(QUICK if args.quick else FULL)
    size["N"] = args.tokens or size["N"]
    size["E"] = args.experts or size["E"]
    world_sizes = [int(w) for w in args.world_sizes.split(",") if w.strip()]
    for w in world_sizes:
        if w < 1 or size["E"] % w or size["N"] % w:
            raise SystemExit(f"--world-sizes: {w} must be >= 1 and divide E={size['E']} and N={size['N']}")
    if args.threads < max(world_sizes):
        raise SystemExit(f"--threads: {args.threads} is fewer than the largest world size {max(world_sizes)}")
    def rows(fn, impls: list[tuple[str, int]], extra: tuple) -> list[dict]:
        """One record per (impl, world size): the slowest rank's."""
        out = []
        for impl, w in impls:
            try:
                ranks = run_local(fn, w, (impl, *extra), timeout_s=args.timeout, deadline_s=args.timeout,
                                  num_threads=args.threads // w)
                out.append(max(ranks, key=lambda r: r["median_s"]))
            except LocalRunError as e:
                out.append({"impl": impl, "world_size": w, "error": str(e).splitlines()[-1]})
        return out

    records = rows(measure, [("moe", 1)] + [("ep", w) for w in world_sizes], (size, args.router, args.repeats))
    print(f"layer: N={size['N']} d={size['d']} h={size['h']} E={size['E']} k={size['k']} router={args.router} "
          f"float32 cpu threads={args.threads} repeats={args.repeats}")
    print(markdown_table(records))
    if not args.no_lm:
        lm_impls = [("lm", 1)] + [(impl, w) for w in world_sizes for impl in ("lm-ep", "lm-dp")]
        lm = rows(measure_lm, lm_impls, (args.router, args.repeats, LM_QUICK if args.quick else []))
        first = next((r for r in lm if "error" not in r), None)
        if first is not None:
            print(f"\nLM (lm-bbc tiny{' --quick' if args.quick else ''}): {first['tokens']} tokens per step, "
                  f"d={first['d']} layers={first['layers']} E={first['E']} k={first['k']} router={args.router} "
                  f"float32 cpu threads={args.threads} repeats={args.repeats}")
        print(markdown_table(lm, base_impl="lm"))
        records += lm
    write_json(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
