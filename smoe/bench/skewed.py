"""Skewed-stream experiment: does aux-loss-free bias balancing fix a load imbalance that the data creates?

Inputs x = mu + noise, with mu pointing at the gate vectors of `hot` experts at initialisation, so a router
first sends most tokens to those experts. A small MoE regresses a fixed random teacher, x -> tanh(x A) B, with
no aux loss, and the load coefficient of variation (population std / mean of the pairs each expert gets, over
the step) is recorded at every step. The training loop follows the Trainer's protocol: after each optimizer
step, `layer.after_step(stats of every micro-batch of that step)`.

    python benchmarks/skewed_stream.py [--steps 400] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from smoe._validate import check_float, check_int
from smoe.layer import MoE, MoEConfig
from smoe.routing.losses import cv_squared

SHAPE = {"num_experts": 8, "d_model": 16, "hidden": 32}
RUNS = {  # name: (router, router options); no run has an aux loss
    "deepseek + bias": ("deepseek", {"bias_rate": 0.001, "seq_aux_coef": 0.0}),
    "deepseek, no bias": ("deepseek", {"bias_rate": None, "seq_aux_coef": 0.0}),
    "topk + bias": ("topk", {"bias_rate": 0.001, "load_balance_coef": 0.0}),
    "topk, no bias": ("topk", {"bias_rate": None, "load_balance_coef": 0.0}),
}


@dataclass
class SkewedStream:
    """One run: the MoE layer (its router and options), stream skew, optimizer steps and micro-batches per step."""

    moe: MoEConfig = field(default_factory=lambda: MoEConfig(**SHAPE, router="deepseek"))
    steps: int = 400
    tokens: int = 1024
    micro_batches: int = 1
    hot: int = 2
    skew: float = 1.0
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "tokens", "micro_batches", "hot"):
            check_int(name, getattr(self, name), low=1)
        self.moe = MoEConfig.of(self.moe, "moe")
        check_int("hot", self.hot, high=self.moe.num_experts)
        check_int("seed", self.seed, low=0)
        check_float("skew", self.skew, low=0.0)
        check_float("lr", self.lr, low=0.0, low_open=True)


def load_cv(routed: torch.Tensor) -> float:
    """Coefficient of variation (population std / mean) of per-expert pair counts (E,)."""
    return float(cv_squared(routed.double()).sqrt())


def run(cfg: SkewedStream) -> list[float]:
    """Train on the skewed stream; the load CV of every optimizer step (before its bias update)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    moe = MoE(cfg.moe)
    d, hidden = cfg.moe.d_model, cfg.moe.hidden
    with torch.no_grad():
        hot = moe.router.gate.weight[: cfg.hot].sum(0)
        mu = cfg.skew * hot / hot.norm()
    a = torch.randn(d, hidden, generator=gen) / d**0.5
    b = torch.randn(hidden, d, generator=gen) / hidden**0.5
    opt = torch.optim.Adam(moe.parameters(), lr=cfg.lr)
    curve = []
    for _ in range(cfg.steps):
        stats = []
        for _ in range(cfg.micro_batches):
            x = mu + torch.randn(cfg.tokens, d, generator=gen)
            out = moe(x)
            loss = F.mse_loss(out.y, torch.tanh(x @ a) @ b) + out.aux_loss
            (loss / cfg.micro_batches).backward()
            stats.append(out.stats)
        opt.step()
        opt.zero_grad(set_to_none=True)
        moe.after_step(stats)
        curve.append(load_cv(torch.stack([s.routed for s in stats]).sum(0)))
    return curve


def window_mean(curve: list[float], step: int, window: int) -> float:
    """Mean CV over the `window` steps ending at `step` (0-based, inclusive): one batch's CV is noisy."""
    return statistics.fmean(curve[max(0, step - window + 1): step + 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--tokens", type=int, default=1024, help="tokens per micro-batch")
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--every", type=int, default=50, help="print a row every this many steps")
    p.add_argument("--window", type=int, default=10, help="steps averaged into each printed CV")
    args = p.parse_args(argv)
    curves = {
        name: [run(SkewedStream(moe=MoEConfig(**SHAPE, router=router, router_options=opts), steps=args.steps,
                                tokens=args.tokens, micro_batches=args.micro_batches, seed=seed))
               for seed in args.seeds]
        for name, (router, opts) in RUNS.items()
    }
    print(f"load CV (mean over seeds {args.seeds} of the mean over the last {args.window} steps)\n")
    print("| step | " + " | ".join(curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    rows = [0, *range(args.every - 1, args.steps, args.every)]
    for step in rows:
        cells = [statistics.fmean(window_mean(c, step, args.window) for c in runs) for runs in curves.values()]
        print(f"| {step + 1} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    print("\nfirst step whose trailing-window CV is < 0.1, per seed:\n")
    for name, runs in curves.items():
        firsts = [next((s + 1 for s in range(len(c)) if window_mean(c, s, args.window) < 0.1), None) for c in runs]
        print(f"- {name}: " + ", ".join("never" if f is None else str(f) for f in firsts))
    return 0
