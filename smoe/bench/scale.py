"""Scale that resolves: at which preset does a 3-seed router comparison detect a 2 % difference?

For each task and preset, one paired `smoe compare` of `topk` against `xmoe` and against `topk` without the
load-balancing loss (no corruption sweep; the headline metric only), into OUT/<task>-<preset>/ (resumable). From its
results, per pair: the seed sd of the baseline's metric (what an unpaired comparison fights), the sd over seeds of
the paired difference, the minimum detectable difference at 3 seeds (80 % power, the verdict rule) in % of the
baseline's metric, the seeds that would detect a 2 % difference, and the minutes of training per run on this
machine (the runs' recorded train time: measure on a quiet machine). Beside the paired sd, the evaluation noise of
the difference: the two models of a seed scored again on the test samples, the bootstrap sd of their difference over
resamples shared by both (root mean square over seeds). A verdict's interval is over seeds on one fixed test split,
so it leaves this out; more seeds do not reduce it (every seed is scored on the same samples), a larger test split
does: where it is not small against the paired sd, the test split limits what the comparison can claim beyond it.

    python benchmarks/resolve_scale.py --tasks lm-bbc,digits --presets tiny,medium --seeds 4 --out runs/scale --jobs 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from smoe.bench import write_json
from smoe.workbench.document import Table, render_markdown
from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.grid.jobs import add_grid_arguments, grid_config
from smoe.workbench.measure import power
from smoe.workbench.measure.rule import Rule
from smoe.workbench.results.schema import get, group_runs, is_finished, load_results, number
from smoe.workbench.results.verdicts import paired_comparisons
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.run.runner import load_run
from smoe.workbench.tasks.base import SampleScores

ENTRIES = "topk,xmoe,topk-noaux=topk:load_balance_coef=0.0"
BASELINE = "topk"
TARGET = 0.02  # the difference to resolve, as a fraction of the baseline's metric
SEEDS_AT = 3  # the seeds a claim runs with
RULE = Rule()  # the rule `smoe compare` applies


def _metrics(runs: Sequence[Mapping]) -> list[float]:
    return [m for run in runs if is_finished(run) and (m := number(get(run, "final", "metric"))) is not None]


def scored_test_split(run_dir: str | Path) -> SampleScores:
    """The per-sample parts of a trained run's clean test metric (its latest checkpoint, on the CPU)."""
    _, setup, _ = load_run(run_dir, "cpu")
    if setup.scores is None:
        raise ValueError(f"run_dir {str(run_dir)!r}: its task has no per-sample scores to bootstrap")
    return setup.scores(setup.model, "test", torch.Generator("cpu").manual_seed(0))


def difference_eval_sd(folder: str | Path, results: Mapping, label: str,
                       scored: dict[str, SampleScores] | None = None) -> float | None:
    """Evaluation noise in the paired difference label - baseline: root mean square over the seeds both finished of
    `SampleScores.paired_bootstrap_sd` of the two runs (folder: the comparison's; None without such a seed).
    scored: run_dir -> its `scored_test_split`, filled as runs are scored (to score each run once)."""
    scored = {} if scored is None else scored

    def scores(run: Mapping) -> SampleScores:
        if run["run_dir"] not in scored:
            scored[run["run_dir"]] = scored_test_split(Path(folder, run["run_dir"]))
        return scored[run["run_dir"]]

    done = {(run["label"], run["seed"]): run for run in results["runs"] if is_finished(run)}
    sds = [scores(run).paired_bootstrap_sd(scores(done[BASELINE, seed]))
           for (name, seed), run in sorted(done.items()) if name == label and (BASELINE, seed) in done]
    return math.sqrt(statistics.fmean(sd * sd for sd in sds)) if sds else None


def rule_mdd(n: int, sd: float, m: int, rule: Rule = RULE) -> float:
    """The MDD of `rule` at n seeds in a family of m, for differences of this sd."""
    return power.mdd(rule.test_for(n, m), n, rule.base_level(m), rule.power) * sd


def rule_seeds(difference: float, sd: float, m: int, rule: Rule = RULE) -> int | None:
    """The seeds at which `rule` (family of m) resolves `difference` with 80 % power, for differences of this sd."""
    effect = abs(difference) / sd if sd > 0 else math.inf
    return power.seeds_needed(effect, rule.base_level(m), lambda n: rule.test_for(n, m), None, rule.min_seeds,
                              rule.power)


def scale_rows(results: str | Path | Mapping, target: float = TARGET, folder: str | Path | None = None) -> list[dict]:
    """One row per entry against the baseline: the noise figures of the module docstring (None where undefined;
    the evaluation noise of the difference only with the comparison's `folder`, whose runs it scores again)."""
    results = load_results(results)
    groups = group_runs(results)
    base = _metrics(groups[BASELINE])
    level = statistics.fmean(base)
    times = [t for run in results["runs"] if is_finished(run) and (t := number(run.get("train_time_s"))) is not None]
    steps = sorted({run["steps"] for run in results["runs"] if is_finished(run) and "steps" in run})
    rows, scored = [], {}
    for label, r in paired_comparisons(results, baseline=BASELINE)["final.metric"].items():
        sd = math.nan if r["sd"] is None else r["sd"]
        eval_sd = None if folder is None else difference_eval_sd(folder, results, label, scored)
        rows.append({
            "task": results["task"], "preset": results["preset"], "steps": steps, "pair": f"{label} - {BASELINE}",
            "seeds": r["n"], "metric": level, "seed_sd": statistics.stdev(base) if len(base) > 1 else None,
            "difference": r["mean"], "paired_sd": r["sd"], "eval_sd": eval_sd,
            "mdd3_percent": 100 * rule_mdd(SEEDS_AT, sd, r["family_size"]) / abs(level) if math.isfinite(sd) else None,
            "seeds_for_target": rule_seeds(target * abs(level), sd, r["family_size"]),
            "train_minutes": statistics.fmean(times) / 60 if times else None,
        })
    return rows


def _seeds(row: Mapping) -> str:
    if row["seeds_for_target"] is not None:
        return str(row["seeds_for_target"])
    return "n/a" if row["paired_sd"] is None else "> 1000"


def table(rows: Sequence[Mapping], target: float = TARGET) -> str:
    def num(x, fmt=".3g"):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)

    header = ["task", "preset (steps)", "pair", "seeds", "metric (baseline)", "seed sd (baseline)", "difference",
              "paired sd", "eval sd of the difference", f"MDD at {SEEDS_AT} seeds (% of metric)",
              f"seeds for {100 * target:g} %", "train min / run"]
    body = [[r["task"], f"{r['preset']} ({'/'.join(map(str, r['steps']))})", r["pair"], str(r["seeds"]),
             num(r["metric"], ".4g"), num(r["seed_sd"]), num(r["difference"]), num(r["paired_sd"]),
             num(r.get("eval_sd")), num(r["mdd3_percent"], ".2f"), _seeds(r),
             num(r["train_minutes"], ".1f")] for r in rows]
    return render_markdown([Table(header, body)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="resolve_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="lm-bbc,digits", help="comma-separated tasks (default lm-bbc,digits)")
    p.add_argument("--presets", default="tiny,medium", help="comma-separated presets (default tiny,medium)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per entry (default 4; the sd needs more than 3)")
    p.add_argument("--steps", type=int, default=None, help="every preset compressed to N steps (a quick check)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every run's config")
    p.add_argument("--out", default="runs/scale", help="comparisons go to OUT/<task>-<preset>/ (default runs/scale)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--no-progress", action="store_true")
    add_grid_arguments(p)
    args = p.parse_args(argv)
    rows = []
    for task in args.tasks.split(","):
        for preset in args.presets.split(","):
            out = Path(args.out) / f"{task}-{preset}"
            config = CompareConfig(task=task, entries=parse_entries(ENTRIES), out=str(out), seeds=args.seeds,
                                   preset=preset, steps=args.steps, overrides=args.set, corruptions=[],
                                   baseline=BASELINE)
            print(f"== {task} {preset} -> {out}", file=sys.stderr)
            result = run_compare(config, command="benchmarks/resolve_scale.py " + " ".join(argv or sys.argv[1:]),
                                 progress=not args.no_progress, grid=grid_config(args))
            if result.interrupted is not None:
                return 128 + result.interrupted
            rows += scale_rows(result.results, folder=out)
    print(table(rows))
    write_json(args.json, rows)
    return 0
