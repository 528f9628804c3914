"""Calibration of the verdict rule: does it resolve what is not there at most alpha of the time, and find a difference
of its reported MDD 80 % of the time?

For every distribution of the noise (normal, Student t with 3 degrees of freedom), every number of entries m and
seeds n, `workbench.measure.calibration.calibrate` simulates comparisons of m entries with a baseline and applies
the rule `smoe compare` applies (`Rule()`: Bonferroni over the entries, alpha 0.05, the t-test or the exact
sign-flip test) to them. Without a margin: the false resolution rate (some entry better or worse when every true
difference is 0; the rule promises <= alpha) and the power at the MDD the rule reports (entry 0 better when its true
difference is the MDD; 0.8 promised for normal differences). With a margin of 1 sd of the differences: the false
equivalence rate (some entry equivalent when every true difference is the margin) and the false non-inferiority rate
(some entry non-inferior, equivalent or better at minus the margin), both <= alpha.

    python benchmarks/calibrate_verdicts.py --sims 1000 [--seeds 3-12] [--entries 1-6] [--json PATH]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import asdict

from smoe.bench import write_json
from smoe.workbench.document import Table, render_markdown
from smoe.workbench.measure.calibration import DISTRIBUTIONS, Cell, calibration_cells, monte_carlo_error
from smoe.workbench.measure.rule import Rule


def _span(text: str) -> list[int]:
    """'3-12' or '3,5,8' -> the integers."""
    if "-" in text:
        low, high = (int(x) for x in text.split("-"))
        return list(range(low, high + 1))
    return [int(x) for x in text.split(",")]


def grid_table(cells: Sequence[Cell], fields: Sequence[str], digits: int = 3) -> Table:
    """Rows (distribution, m), columns n; each cell the `fields` joined by ' / '."""
    seeds = sorted({c.n for c in cells})
    rows = {}
    for c in cells:
        rows.setdefault((c.distribution, c.m), {})[c.n] = " / ".join(f"{getattr(c, f):.{digits}f}" for f in fields)
    body = [[dist, str(m), *(cols.get(n, "") for n in seeds)] for (dist, m), cols in rows.items()]
    return Table(["noise", "entries", *(f"n={n}" for n in seeds)], body)


def mdd_table(cells: Sequence[Cell]) -> Table:
    """The rule's MDD (sd of the paired differences) per m and n."""
    seeds = sorted({c.n for c in cells})
    rows: dict[int, dict[int, str]] = {}
    for c in cells:
        rows.setdefault(c.m, {})[c.n] = f"{c.mdd:.2f}"
    return Table(["entries", *(f"n={n}" for n in seeds)], [[str(m), *(v.get(n, "") for n in seeds)]
                                                           for m, v in rows.items()])


def verdict_line(plain: Sequence[Cell], margin: Sequence[Cell], alpha: float, sims: int) -> str:
    """Whether the bounds hold: rates against alpha + 2 Monte-Carlo standard errors, power within 0.8 +- 0.05."""
    bound = alpha + 2 * monte_carlo_error(alpha, sims)
    worst_fr = max(c.false_resolution for c in [*plain, *margin])
    normal = [c.power for c in plain if c.distribution == "normal"]
    heavy = [c.power for c in plain if c.distribution != "normal"]
    worst_fe = max((max(c.false_equivalence, c.false_non_inferiority) for c in margin), default=0.0)
    return (f"{sims} simulations a cell. False resolution at zero effect: at most {worst_fr:.3f} (bound {alpha} + "
            f"2 Monte-Carlo se = {bound:.3f}: {'holds' if worst_fr <= bound else 'FAILS'}). Power at the reported "
            f"MDD, normal differences: {min(normal):.3f}-{max(normal):.3f} (0.8 +- 0.05: "
            f"{'holds' if all(abs(p - 0.8) <= 0.05 for p in normal) else 'FAILS'}); heavy-tailed (t3): "
            f"{min(heavy, default=math.nan):.3f}-{max(heavy, default=math.nan):.3f}. False equivalence or "
            f"non-inferiority at the margin: at most {worst_fe:.3f} ({'holds' if worst_fe <= bound else 'FAILS'}).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="calibrate_verdicts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", type=int, default=1000, help="simulated comparisons per cell and effect (default 1000)")
    p.add_argument("--seeds", default="3-12", help="numbers of seeds, '3-12' or '3,6,9' (default 3-12)")
    p.add_argument("--entries", default="1-6", help="numbers of entries besides the baseline (default 1-6)")
    p.add_argument("--margin", type=float, default=1.0, help="the margin, in sd of the paired differences (default 1)")
    p.add_argument("--adjustment", default="bonferroni", help="the rule's adjustment (default bonferroni)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every cell as JSON")
    args = p.parse_args(argv)
    rule = Rule(adjustment=args.adjustment)
    seeds, entries = _span(args.seeds), _span(args.entries)
    plain = calibration_cells(rule, seeds, entries, None, args.sims, DISTRIBUTIONS)
    margin = calibration_cells(rule, seeds, entries, args.margin, args.sims, DISTRIBUTIONS)
    print(render_markdown([
        Table(["rule"], [[f"{rule.adjustment} over the m entries, alpha {rule.alpha:g}, paired t-test or exact "
                          f"sign-flip test (auto); margin {args.margin:g} sd in the second table"]]),
        mdd_table([c for c in plain if c.distribution == DISTRIBUTIONS[0]]),
        grid_table(plain, ["false_resolution", "power"]),
        grid_table(margin, ["false_resolution", "false_equivalence", "false_non_inferiority"]),
    ]))
    print(verdict_line(plain, margin, rule.alpha, args.sims))
    write_json(args.json, [{**asdict(c), "margin": None} for c in plain]
               + [{**asdict(c), "margin": args.margin} for c in margin])
    return 0
