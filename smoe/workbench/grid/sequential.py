"""`smoe compare --seeds auto`: seeds added in batches to the entries not yet decided, until every entry is decided
or the seeds (`--max-seeds`) or the training budget (`--budget`) are spent, under the group-sequential rule of
`smoe.workbench.measure.sequential`.

Each look is one `run_compare` of the plan so far (every entry at its seeds; the baseline at the most any entry
has), so runs already in the folder count and are never trained twice, any executor runs the grid, and a re-run
of the same command replays the looks from the runs in the folder (each look judged on its own seeds only) and
continues where the sequence stopped. The budget is training time (the sum of the runs' recorded training time,
`timing.json`): a batch is started only while the time spent plus the batch's estimate (its runs x the mean time of
a run so far) fits, so a replay takes the same decisions. results.json gets a "sequential" section (the design,
and per entry its seeds, looks and stop reason), and the headline verdicts are the rule's
(`workbench.results.sequential`).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from smoe._files import atomic_write
from smoe._validate import check_float, check_int
from smoe.workbench.grid.compare import CompareConfig, CompareResult, run_compare
from smoe.workbench.grid.jobs import GridConfig
from smoe.workbench.measure.rule import Margin
from smoe.workbench.measure.sequential import SPENDING_DEFAULT, Design, Look, judge_look
from smoe.workbench.report.comparison import write_report
from smoe.workbench.results.schema import RESULTS_FILE, get, is_finished, load_results, number
from smoe.workbench.results.verdicts import with_statistics
from smoe.workbench.tasks import get_task


@dataclass
class SequentialConfig:
    """max_seeds: the most seeds an entry gets; first: seeds of the first look; batch: seeds added per look;
    budget_s: training time the comparison may spend (None: no limit); alpha: the family's error rate; spending:
    `Design.spending`. The margin (equivalence verdicts) is the comparison's (`CompareConfig.margin`)."""

    max_seeds: int
    first: int = 3
    batch: int = 2
    budget_s: float | None = None
    alpha: float = 0.05
    spending: str = SPENDING_DEFAULT

    def __post_init__(self):
        check_int("max_seeds", self.max_seeds, low=self.first)
        if self.budget_s is not None:
            check_float("budget_s", self.budget_s, low=0.0, low_open=True)

    def design(self, entries: int) -> Design:
        return Design(self.max_seeds, self.first, self.batch, self.alpha, entries, self.spending)


def parse_budget(text: str) -> float:
    """--budget: "90m", "2h", "1.5h", "3600s" or seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    body = text.strip().lower()
    scale = units.get(body[-1:])
    try:
        value = float(body[:-1] if scale else body) * (scale or 1)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"budget must be a positive duration such as 90m, 2h or 3600s, got {text!r}")
    return value


def run_sequential(config: CompareConfig, seq: SequentialConfig, command: str = "", progress: bool = True,
                   grid: GridConfig | None = None) -> CompareResult:
    """Run the looks of `seq` on the entries of `config` (its `seeds` is ignored); the comparison's results.json
    gets the "sequential" section and the report is written after the last look."""
    labels = [entry.label for entry in config.entries]
    baseline = config.baseline
    others = [label for label in labels if label != baseline]
    if not others:
        raise ValueError("--seeds auto needs at least two entries (a baseline and one to compare)")
    design = seq.design(len(others))
    looks = design.looks()
    higher = get_task(config.task).higher_is_better
    margin = None if config.margin is None else Margin.parse(config.margin)
    seeds = dict.fromkeys(labels, 0)
    history: dict[str, list[Look]] = {label: [] for label in others}
    open_ = list(others)
    result = None
    for k, n in enumerate(looks):
        plan = {**seeds, **dict.fromkeys(open_, n)}
        plan[baseline] = max(plan[label] for label in others)
        planned = dataclasses.replace(config, seeds=plan[baseline], entry_seeds=plan)
        if k and seq.budget_s is not None and not _fits(config.out, plan, seq.budget_s):
            for label in open_:  # the previous look was the last: read it as such
                history[label][-1] = _judge(design, history[label][-1].n, _values(config.out), label, baseline,
                                            higher, margin, last=True)
            break
        seeds = plan
        result = run_compare(planned, command, progress, grid, report=False)
        if result.interrupted is not None:
            return result
        values = _values(config.out)
        for label in open_:
            history[label].append(_judge(design, n, values, label, baseline, higher, margin, last=False))
        if progress:
            said = ", ".join(f"{label} {history[label][-1].verdict}" for label in open_)
            print(f"smoe compare: look {k + 1} of {len(looks)} at {n} seeds: {said}", file=sys.stderr)
        open_ = [label for label in open_ if history[label][-1].stop is None]
        if not open_:
            break
    path = Path(config.out) / RESULTS_FILE
    results = load_results(path)
    results["sequential"] = section(design, seq, margin, history, _spent(config.out))
    atomic_write(path, json.dumps(with_statistics(results, baseline), indent=1).encode())
    return dataclasses.replace(result, results=path, report=write_report(config.out).html)


def section(design: Design, seq: SequentialConfig, margin: Margin | None, history: Mapping[str, list[Look]],
            spent_s: float) -> dict:
    """results.json's "sequential": the design and, per entry, its seeds, stop reason, verdict, RCI and looks."""
    entries = {}
    for label, looks in history.items():
        last = looks[-1].to_dict()
        entries[label] = {"seeds": last["n"], "stop": last["stop"], "verdict": last["verdict"],
                          "ci_low": last["ci_low"], "ci_high": last["ci_high"],
                          "looks": [look.to_dict() for look in looks]}
    return {"rule": "group-sequential paired t, repeated confidence intervals", "alpha": design.alpha,
            "spending": design.spending, "family": design.entries, "first": design.first, "batch": design.batch,
            "max_seeds": design.max_seeds, "looks": list(design.looks()), "bounds": list(design.bounds()),
            "margin": None if margin is None else str(margin), "budget_s": seq.budget_s, "spent_s": spent_s,
            "entries": entries}


def _judge(design: Design, n: int, values: Mapping[str, dict[int, float]], label: str, baseline: str,
           higher: bool, margin: Margin | None, last: bool) -> Look:
    """The look at n seeds of `label`: a seed without a finished run (failed, diverged) is a nan difference."""
    base = [values[baseline].get(s, float("nan")) for s in range(n)]
    entry = [values[label].get(s, float("nan")) for s in range(n)]
    finite = [b for b in base if b == b]
    level = statistics.fmean(finite) if finite else float("nan")
    delta = None if margin is None or level != level else float(margin.absolute(level))
    return judge_look(design, [e - b for e, b in zip(entry, base)], higher, delta,
                      scale=abs(level) if level == level else 1.0, last=last)


def _values(out: str) -> dict[str, dict[int, float]]:
    """label -> seed -> headline metric of its finished runs (nan for a failed one) in out/results.json."""
    results = load_results(Path(out))
    values: dict[str, dict[int, float]] = {}
    for run in results["runs"]:
        metric = number(get(run, "final", "metric")) if is_finished(run) else None
        if is_finished(run) or run.get("status") == "failed":
            values.setdefault(run["label"], {})[int(run["seed"])] = float("nan") if metric is None else metric
    return values


def _spent(out: str) -> float:
    """Training time of the comparison's finished runs, in seconds."""
    path = Path(out) / RESULTS_FILE
    runs = load_results(path)["runs"] if path.exists() else []
    return sum(t for run in runs if is_finished(run) and (t := number(run.get("train_time_s"))) is not None)


def _fits(out: str, plan: Mapping[str, int], budget_s: float) -> bool:
    """Whether the runs the plan adds fit the budget: time spent + their number x the mean time of a run."""
    runs = load_results(Path(out))["runs"]
    done = {(run["label"], int(run["seed"])) for run in runs if is_finished(run)}
    times = [t for run in runs if is_finished(run) and (t := number(run.get("train_time_s"))) is not None]
    new = sum((label, s) not in done for label, n in plan.items() for s in range(n))
    return _spent(out) + new * (statistics.fmean(times) if times else 0.0) <= budget_s
