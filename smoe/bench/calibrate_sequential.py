"""Calibration of the sequential rule of `smoe compare --seeds auto` (`smoe.workbench.measure.sequential`) by
simulation, without a margin: its family-wise false resolution rate at zero effect (every entry equal to the
baseline; some entry resolved better or worse), and for one entry with a true effect (the others at zero) how often
it resolves `better` and the seeds it uses. Effects are in sd of the per-seed paired differences; each run's metric
is a seed value shared by every entry plus noise of sd 1 / sqrt(2), normal or Student t with 3 degrees of freedom
(heavy tails), so two entries' differences share the baseline's noise. Pure numpy and scipy, no training: a minute
or two on a quiet machine.

    python benchmarks/calibrate_sequential.py --sims 20000 --json docs/calibrate_sequential.json
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from smoe.bench import write_json
from smoe.workbench.document import Table, render_markdown
from smoe.workbench.measure.sequential import SPENDING_DEFAULT, Design, simulate_family

EFFECTS = (0.5, 0.8, 1.0, 1.5, 3.0, 10.0)


def cell(spending: str, m: int, max_seeds: int, distribution: str, sims: int, seed: int) -> dict:
    """One row: the family-wise false resolution at zero effect and, per effect, power and mean seeds of entry 0."""
    design = Design(max_seeds=max_seeds, entries=m, spending=spending)
    zero, used0 = simulate_family(design, [0.0] * m, sims, distribution=distribution, seed=seed)
    row = {"spending": spending, "entries": m, "max_seeds": max_seeds, "distribution": distribution, "sims": sims,
           "looks": list(design.looks()), "bounds": [round(c, 3) for c in design.bounds()],
           "false_resolution": float(np.mean((zero != "not resolved").any(axis=1))),
           "seeds_at_zero": float(used0.mean()), "effects": {}}
    for i, effect in enumerate(EFFECTS):
        verdicts, used = simulate_family(design, [effect] + [0.0] * (m - 1), sims, distribution=distribution,
                                         seed=seed + 1 + i)
        row["effects"][str(effect)] = {"power": float(np.mean(verdicts[:, 0] == "better")),
                                       "seeds": float(used[:, 0].mean()),
                                       "runs": float(used.sum(axis=1).mean() + used.max(axis=1).mean())}
    return row


def table(rows: list[dict]) -> str:
    header = ["spending", "entries", "max seeds", "noise", "false resolution (alpha 0.05)", "seeds at 0",
              *(f"effect {e}: power / mean seeds" for e in EFFECTS)]
    body = [[r["spending"], str(r["entries"]), str(r["max_seeds"]), r["distribution"],
             f"{r['false_resolution']:.4f} (+- {math.sqrt(0.05 * 0.95 / r['sims']):.4f})", f"{r['seeds_at_zero']:.2f}",
             *(f"{r['effects'][str(e)]['power']:.2f} / {r['effects'][str(e)]['seeds']:.1f}" for e in EFFECTS)]
            for r in rows]
    return render_markdown([Table(header, body)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="calibrate_sequential", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", type=int, default=20000, help="simulated comparisons per cell (default 20000)")
    p.add_argument("--max-seeds", type=int, default=10)
    p.add_argument("--spending", default=f"{SPENDING_DEFAULT},obf,pocock", help="comma-separated spending functions")
    p.add_argument("--entries", default="1,2,3", help="comma-separated family sizes")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    rows = [cell(spending, m, args.max_seeds, distribution, args.sims, seed=100 * m + 10 * k)
            for k, spending in enumerate(args.spending.split(",")) for m in map(int, args.entries.split(","))
            for distribution in ("normal", "t3")]
    print(table(rows))
    write_json(args.json, rows)
    return 0
