"""Wall time of one comparison grid on each executor (`--jobs 1`, `--jobs 2`, `--cluster local:2` by default), each
into a fresh folder, in rounds whose order alternates (this VM's speed drifts over minutes); a Markdown table for
docs/benchmarks.md with the ratios against the first executor, and how far the runs' final metrics differ from it
(the executors differ only in threads per run, which changes float rounding).

    python benchmarks/bench_grid.py                                  # the demo grid (make demo), 2 rounds
    python benchmarks/bench_grid.py --task digits --routers topk,expert_choice --steps 20 --corrupt noise:1 \\
        --rounds 1                                                   # a quick check of the script

Every grid runs as `python -m smoe compare ... --no-progress` in a subprocess, timed from its start to its exit
(imports, data, training, evaluation, analysis, report). The caches (tokenizer) are warmed by one untimed 1-step
run first. Needs `pip install 'smoe[cluster]'` for a --cluster executor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from smoe.bench import write_json

DEMO = ["--task", "lm-bbc", "--routers", "topk,xmoe,ssr,deepseek", "--seeds", "2", "--preset", "tiny",
        "--corrupt", "substitute:2,substitute:4,insert:2,insert:4"]


def compare(args: list[str], out: Path) -> float:
    """Seconds `smoe compare ARGS --out OUT` took; SystemExit when it failed."""
    command = [sys.executable, "-m", "smoe", "compare", *args, "--out", str(out), "--no-progress"]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def final_metrics(out: Path) -> dict:
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {(r["label"], r["seed"]): r["final"]["metric"] for r in runs}


def max_relative_difference(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)


def cpu() -> str:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    return f"{names[0]} x {len(names)}" if names else platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executors", default="--jobs 1;--jobs 2;--cluster local:2",
                        help="';'-separated smoe compare options, one executor each; the first is the reference")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the order reversed every other one (2)")
    parser.add_argument("--out", default=None, help="folder for the grids (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args, grid = parser.parse_known_args(argv)
    grid = grid or DEMO
    executors = [e.split() for e in args.executors.split(";") if e.strip()]
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-grid-"))
    load = os.getloadavg()[0]
    task = grid[grid.index("--task") + 1]
    compare(["--task", task, "--routers", "topk", "--seeds", "1", "--steps", "1", "--corrupt", ""], root / "warm-up")

    seconds: dict[int, list[float]] = {i: [] for i in range(len(executors))}
    metrics: dict[int, dict] = {}
    for r in range(args.rounds):
        order = list(range(len(executors)))[:: 1 if r % 2 == 0 else -1]
        for i in order:
            out = root / f"executor{i}-round{r}"
            seconds[i].append(compare([*grid, *executors[i]], out))
            metrics.setdefault(i, final_metrics(out))
            print(f"round {r}: {' '.join(executors[i])}: {seconds[i][-1]:.1f} s", file=sys.stderr)

    mean = {i: sum(s) / len(s) for i, s in seconds.items()}
    reference = " ".join(executors[0])
    lines = [f"smoe compare {' '.join(grid)}",
             f"machine: {cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"python {platform.python_version()}, load average {load:.2f} at the start, "
             f"{datetime.now(timezone.utc):%Y-%m-%d}; {args.rounds} rounds", "",
             f"| executor | wall time per round (s) | mean (s) | speed-up vs `{reference}` | final metric: max rel. "
             "diff. |", "|---|---|---|---|---|"]
    rows = [{"executor": " ".join(e), "seconds": seconds[i], "mean_s": mean[i], "speedup": mean[0] / mean[i],
             "metric_max_rel_diff": max_relative_difference(metrics[0], metrics[i])} for i, e in enumerate(executors)]
    lines += [f"| `{r['executor']}` | {', '.join(f'{s:.1f}' for s in r['seconds'])} | {r['mean_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['metric_max_rel_diff']:.1e} |" for r in rows]
    print("\n".join(lines))
    write_json(args.json, {"grid": grid, "cpu": cpu(), "cores": os.cpu_count(), "load_average": load, "rows": rows})
    if args.out is None:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
