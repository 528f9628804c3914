"""Does torch.compile speed up the tiny LM's training step on a CPU? (issue 17)

    python benchmarks/bench_compile.py [--steps 20] [--warmup 3] [--rounds 5] [--set KEY=VALUE ...]

The `smoe bench train` MoE model (the lm-bbc tiny LM on uniform random token ids) trained by the Trainer's whole
optimizer step, eager and with `train.compile=true` (torch.compile's default backend, inductor), in alternating
rounds after warm-up steps; the compiled model's warm-up compiles it, and its time is reported. On a CPU in
float32 the experts take the loop backend, which runs eagerly between compiled graphs (grouped_mm's fake-tensor
rule takes bfloat16 only in torch 2.13). Prints a Markdown table: tokens/s (median over rounds) and the median of
the per-round ratios to eager (robust to a machine whose speed drifts between rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from smoe.bench.train import build_trainer, tokens_per_second

ROWS = {"eager": [], "compiled": ["train.compile=true"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per row and round (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row first (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported (default 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="lm-bbc config override")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {row: build_trainer("moe", "tiny", "topk", "cpu", f"{tmp}/{row}", [*args.set, *extra])[0]
                    for row, extra in ROWS.items()}
        batches = {row: iter(t.train_batches(t.data_rng)) for row, t in trainers.items()}
        warmup = {}
        for row, trainer in trainers.items():
            start = time.perf_counter()
            tokens_per_second(trainer, batches[row], args.warmup)
            warmup[row] = time.perf_counter() - start
        rates: dict[str, list[float]] = {row: [] for row in ROWS}
        for _ in range(args.rounds):
            for row, trainer in trainers.items():
                rates[row].append(tokens_per_second(trainer, batches[row], args.steps))
    config = trainers["eager"].config
    print(f"lm-bbc tiny, topk, batch={config.batch_size} cpu float32 threads={torch.get_num_threads()} "
          f"steps={args.steps} rounds={args.rounds} torch {torch.__version__}")
    print(f"| train step | tokens/s (median) | rounds (tokens/s) | ÷ eager (median per round) | first {args.warmup} "
          f"steps (s) |")
    print("|---|---|---|---|---|")
    for row, values in rates.items():
        ratio = statistics.median(v / e for v, e in zip(values, rates["eager"]))
        print(f"| {row} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | "
              f"{ratio:.2f} | {warmup[row]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
