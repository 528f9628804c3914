"""Training-throughput benchmark: tokens/s of the lm-bbc LM with an MoE router against a dense LM of equal
active FLOPs, each trained by the Trainer's own optimizer step (forward, aux losses, backward, clipping, AdamW,
after_step).

impls:
  moe    the preset's LM, MoE FFN in the preset's blocks (router --router, k experts of hidden h per token)
  dense  the same LM with a dense SwiGLU FFN of hidden k * h in every block (the same active FLOPs)

Tokens are uniform random ids (throughput does not depend on the text; no data is loaded). Rounds alternate
the impls so that load changes on the machine hit both; the median tokens/s over rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from smoe.bench import write_json
from smoe.data.batches import lm_batches
from smoe.models import LM, LMConfig
from smoe.workbench.run.config import check_device, resolve_config
from smoe.workbench.train.data_parallel import ParallelConfig, prepare_model
from smoe.workbench.train.trainer import StepOutput, Trainer

IMPLS = ("moe", "dense")


def build_trainer(impl: str, preset: str, router: str, device: str, out_dir: str,
                  overrides: list[str] | None = None, parallel: ParallelConfig | None = None
                  ) -> tuple[Trainer, LMConfig]:
    """The Trainer of `impl` on uniform random tokens; with `parallel`, on every rank of the initialised process
    group (the preset's batch is the global batch)."""
    run = resolve_config("lm-bbc", preset, router=router, device=device, overrides=overrides or [])
    config = run.model_config(vocab_size=run.data.vocab_size, max_len=run.data.seq_len)
    if impl == "dense":  # the same active FLOPs: one FFN of k times the experts' hidden width
        config = replace(config, moe_every=0, ffn_hidden=config.moe.router_options.k * config.ffn_hidden)
    torch.manual_seed(0)
    stream = torch.randint(0, config.vocab_size, (1 << 20,), generator=torch.Generator().manual_seed(0))

    def loss(model, batch, step, generator) -> StepOutput:
        x, y = batch
        out = model(x, step=step, generator=generator)
        ce = torch.nn.functional.cross_entropy(out.logits.float().flatten(0, 1), y.flatten())
        return StepOutput(loss=ce, moe=out.moe, count=y.numel())

    model = LM(config)
    if parallel is not None:
        prepare_model(model, parallel, dist.get_world_size())
    trainer = Trainer(model, run.train, loss_fn=loss, out_dir=out_dir, device=device, progress=False,
                      train_batches=lambda g: lm_batches(stream, run.train.batch_size, run.data.seq_len, g),
                      data_parallel=parallel is not None)
    return trainer, config


def tokens_per_second(trainer: Trainer, batches, steps: int) -> float:
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    start, tokens = time.perf_counter(), 0
    for _ in range(steps):
        outputs, _ = trainer.train_step(batches)
        tokens += sum(o.count for o in outputs)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return tokens / (time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="smoe bench train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="lm-bbc preset whose model and batch are used (default tiny)")
    p.add_argument("--router", default="topk", help="router of the MoE model (default topk)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the lm-bbc config as in `smoe train` (repeatable)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per impl and round (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per impl first (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported (default 5)")
    p.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up, 2 rounds (a smoke run)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--json", default=None, help="also write the records to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 3, 1, 2
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    try:
        check_device(args.device)
        with tempfile.TemporaryDirectory() as tmp:
            built = {impl: build_trainer(impl, args.preset, args.router, args.device, tmp, args.set) for impl in IMPLS}
            streams = {impl: iter(t.train_batches(t.data_rng)) for impl, (t, _) in built.items()}
            rates: dict[str, list[float]] = {impl: [] for impl in IMPLS}
            for impl, (trainer, _) in built.items():
                if args.warmup:
                    tokens_per_second(trainer, streams[impl], args.warmup)
            for _ in range(args.rounds):
                for impl, (trainer, _) in built.items():
                    rates[impl].append(tokens_per_second(trainer, streams[impl], args.steps))
    except ValueError as e:
        raise SystemExit(f"smoe bench train: {e}") from e
    records = []
    for impl, (trainer, config) in built.items():
        records.append({"impl": impl, "router": args.router if impl == "moe" else None,
                        "params": sum(p.numel() for p in trainer.model.parameters()),
                        "ffn_hidden": config.ffn_hidden, "moe_layers": len(trainer.model.moe_layers()),
                        "tokens_per_s": statistics.median(rates[impl]), "rounds": rates[impl]})
    dense = records[1]["tokens_per_s"]
    cfg = built["moe"][1]
    print(f"lm-bbc {args.preset}: d={cfg.d_model} layers={cfg.num_layers} E={cfg.moe.num_experts} "
          f"k={cfg.moe.router_options.k} "
          f"h={cfg.ffn_hidden} vocab={cfg.vocab_size} T={cfg.max_len} batch={built['moe'][0].config.batch_size} "
          f"{args.device} threads={torch.get_num_threads()} steps={args.steps} rounds={args.rounds}")
    print("| impl | params | FFN hidden | MoE layers | tokens/s (median) | ÷ dense |")
    print("|---|---|---|---|---|---|")
    for r in records:
        name = f"moe ({r['router']})" if r["router"] else r["impl"]
        print(f"| {name} | {r['params']:,} | {r['ffn_hidden']} | {r['moe_layers']} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s'] / dense:.2f} |")
    write_json(args.json, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
