"""`smoe compare`: entries (`workbench.run.entry`: a router with options and config overrides) x seeds on one task,
each trained through the Trainer into DIR/runs/<label>-s<seed>/, evaluated clean and corrupted, analysed
(`workbench.run.lifecycle`), gathered into DIR/results.json (`workbench.results.record`, with the paired
statistics against the baseline entry of `workbench.results.verdicts`) and rendered as DIR/report.md and
DIR/report.html (`workbench.report.comparison.write_report`), on the executor `--jobs` / `--cluster` choose
(`workbench.grid.jobs`).

Resumable: a run with final.json (and its analysis and evaluation) is skipped, a run with a checkpoint is
resumed, a run folder without one starts over; a run folder written with another configuration is an error.
Before anything trains, every entry's router (with its options) passes the conformance checks of `smoe.conformance`
(the compile check only when the runs compile), or the comparison refuses to start, naming the failed checks.
The comparison folder and each run folder have one writer (`workbench.train.run_folder.hold_folder`); a run whose
files are damaged is recorded as failed and the grid goes on.
`--steps N` compresses the preset's schedule to N steps (`workbench.run.config.compressed_schedule`); --set and
entry overrides still win. `--tune KEY=V1,V2,...` first picks each entry's value on the validation split at seeds
disjoint from the comparison's (`workbench.grid.tune`, runs in DIR/tune/), then runs every entry at its pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smoe._validate import check_choice, check_int
from smoe.conformance import CHECKS, check_router, failures
from smoe.plugins import provenance
from smoe.workbench.grid.executors import Outcome, StepCallback
from smoe.workbench.grid.jobs import GridConfig, run_tasks
from smoe.workbench.grid.tune import TUNE_SEED_START, Tuning, run_tuning, tune_runs
from smoe.workbench.measure.rule import Margin
from smoe.workbench.report.comparison import write_report
from smoe.workbench.results.record import collect_run, write_results
from smoe.workbench.run.config import RunConfig, compressed_schedule, resolve_config
from smoe.workbench.run.entry import Entry
from smoe.workbench.run.evaluate import check_corruptions, default_sweep
from smoe.workbench.run.lifecycle import check_same_config, evaluate_one, train_one
from smoe.workbench.tasks import get_task
from smoe.workbench.train.run_folder import hold_folder


@dataclass
class CompareConfig:
    """A comparison. corruptions: None = the task's default sweep (`workbench.run.evaluate.default_sweep`), [] = none;
    capacities: test-time capacity ratios to evaluate (with BPR on and off for routers that have it); baseline: the
    label every other entry is compared with (`workbench.results.verdicts`; None: the first entry); margin: the
    difference that does not matter, "2%" of the baseline or an absolute "0.5" (`measure.rule.Margin`), for the
    equivalence and non-inferiority verdicts; tune: what each entry picks on the validation split before the
    comparison runs (`workbench.grid.tune`; None: nothing); entry_seeds: label -> seeds of that entry where it
    runs fewer than `seeds` (a sequential comparison's plan)."""

    task: str
    entries: list[Entry]
    out: str
    seeds: int = 3
    preset: str = "tiny"
    steps: int | None = None
    overrides: list[str] = field(default_factory=list)
    device: str = "cpu"
    corruptions: list[str] | None = None
    capacities: list[float] = field(default_factory=list)
    bpr: str = "both"
    baseline: str | None = None
    margin: str | None = None
    tune: Tuning | None = None
    entry_seeds: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        task = get_task(self.task)
        if self.margin is not None:
            Margin.parse(self.margin)
        check_int("seeds", self.seeds, low=1)
        if self.tune is not None and self.seeds > TUNE_SEED_START:
            raise ValueError(f"seeds must be <= {TUNE_SEED_START} with tune (the tuning seeds start at "
                             f"{TUNE_SEED_START} and must differ from the comparison's), got {self.seeds}")
        if self.corruptions is not None:
            check_corruptions(task, self.corruptions)  # before any run trains
        if self.steps is not None:
            check_int("steps", self.steps, low=1)
        check_choice("bpr", self.bpr, ("both", "on", "off"))
        if not self.entries:
            raise ValueError("entries must hold at least one Entry")
        labels = [entry.label for entry in self.entries]
        if self.baseline is None:
            self.baseline = labels[0]
        elif self.baseline not in labels:
            raise ValueError(f"baseline must be the label of an entry ({', '.join(labels)}); got {self.baseline!r}")
        for label, seeds in self.entry_seeds.items():
            if label not in labels:
                raise ValueError(f"entry_seeds must name entries ({', '.join(labels)}); got {label!r}")
            check_int(f"entry_seeds[{label!r}]", seeds, low=1, high=self.seeds)

    def seeds_of(self, label: str) -> int:
        """Seeds 0..n-1 of entry `label`: its entry_seeds, else `seeds`."""
        return self.entry_seeds.get(label, self.seeds)

    def schedule_overrides(self) -> list[str]:
        """--steps N as overrides (`compressed_schedule`); none without --steps."""
        return [] if self.steps is None else compressed_schedule(self.task, self.preset, self.steps)

    def eval_request(self) -> dict:
        """What `evaluate_one` evaluates every trained run on: corruptions (the task's default sweep when None),
        test-time capacities, BPR on/off."""
        corruptions = default_sweep(get_task(self.task).corruptions) if self.corruptions is None else self.corruptions
        return {"corruptions": corruptions, "capacities": self.capacities, "bpr": self.bpr}

    def run_config(self, entry: Entry, seed: int):
        overrides = [*self.schedule_overrides(), *self.overrides, *entry.config_overrides()]
        try:
            return resolve_config(self.task, self.preset, router=entry.router, seed=seed, device=self.device,
                                  overrides=overrides)
        except ValueError as e:
            raise ValueError(f"entry {entry.label!r}: {e}") from e


@dataclass(frozen=True)
class GridRun:
    """One run of a comparison: what a worker needs to train, evaluate and collect it (picklable)."""

    config: CompareConfig
    entry: Entry
    seed: int
    run: RunConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.entry.label} s{self.seed}"


def grid_runs(config: CompareConfig) -> list[GridRun]:
    """Every (entry, seed) of `config` in seed-major order (an interrupted grid still has every entry of the first
    seeds); every configuration is resolved, and every existing run folder checked against it, before anything
    is trained or written."""
    out = Path(config.out)
    grid = [GridRun(config, entry, seed, config.run_config(entry, seed), out / "runs" / f"{entry.folder}-s{seed}")
            for seed in range(config.seeds) for entry in config.entries if seed < config.seeds_of(entry.label)]
    for one in grid:
        if (one.run_dir / "config.yaml").exists():
            check_same_config(one.run, one.run_dir)
    return grid


def check_routers(runs: Sequence) -> None:
    """The conformance checks (`smoe.conformance`) of every entry's router with its options (and k and E), the
    compile check only where the runs compile (`runs`: anything with .entry and .run, grid or tuning runs); a
    ValueError naming every failed check of every entry."""
    first: dict = {}
    for one in runs:
        first.setdefault(one.entry.label, one)
    failed = []
    for one in first.values():
        moe = one.run.model.get("moe") or {}
        checks = [c for c in CHECKS if c != "compile" or one.run.train.compile]
        router, options = moe.get("router", "topk"), moe.get("router_options") or {}
        results = check_router(router, options, moe.get("num_experts", 4), checks)
        failed += [f"  {one.entry.label} ({router}): {r.name}: {r.reason}" for r in failures(results)]
    if failed:
        raise ValueError("entries fail the router conformance checks (`smoe check-router NAME` shows every check); "
                         "nothing was trained:\n" + "\n".join(failed))


def run_one(one: GridRun, report: StepCallback) -> Outcome:
    """Train, evaluate and analyse one run, holding its folder (`report(step)` after every training step); its
    record in results.json. A run that raises is "failed" with its error; an interrupted training (checkpoint
    written) is "skipped"."""
    interrupted = None
    try:
        with hold_folder(one.run_dir):
            interrupted = train_one(one.run, one.run_dir, report)
            if interrupted is None:
                evaluate_one(one.run, one.run_dir, one.config.eval_request(), one.config.device, report)
        status, error = ("skipped", "interrupted") if interrupted is not None else ("done", None)
    except Exception as e:  # one failed run must not stop the grid
        status, error = "failed", f"{type(e).__name__}: {e}"
    record = collect_run(one.entry, one.seed, one.run_dir, Path(one.config.out),
                         get_task(one.config.task).metric_key, status, error)
    return Outcome(record, interrupted=interrupted)


@dataclass
class CompareResult:
    results: Path
    report: Path | None
    failed: list[str]
    interrupted: int | None  # the signal that stopped the grid


def run_compare(config: CompareConfig, command: str = "", progress: bool = True,
                grid: GridConfig | None = None, report: bool = True) -> CompareResult:
    """Train, evaluate and analyse every (entry, seed) of `config` on the executor `grid` says (default: one run
    after another in this process; `smoe.workbench.grid.jobs`), then write results.json and the report. results.json is
    rewritten as runs end. A run that raises is recorded as failed and the grid goes on; an interrupted grid
    (SIGINT/SIGTERM: running trainings checkpoint and stop) records the runs not done as skipped. The comparison
    folder is held (one writer) throughout, each run folder by the process that runs it. report=False: no report
    (a sequential comparison writes it after its last look).

    With `config.tune`, the tuning runs come first (`workbench.grid.tune.run_tuning`, on the same executor); an
    interrupted tuning returns with DIR/tune/tuning.json as its results, and the comparison runs at the picks."""

    grid = grid or GridConfig()
    tuning_runs = tune_runs(config) if config.tune is not None else None
    runs = grid_runs(config) if tuning_runs is None else []  # with tuning: known once the entries' picks are
    check_routers(runs if tuning_runs is None else tuning_runs)
    with hold_folder(config.out):
        tuning = None
        if tuning_runs is not None:
            tuning = run_tuning(config, tuning_runs, grid, progress)
            if tuning.interrupted is not None:
                return CompareResult(tuning.path, None, tuning.failed, tuning.interrupted)
            config = tuning.apply(config)
            runs = grid_runs(config)
        result = _run_grid(config, command, progress, runs, grid, tuning and tuning.record, report)
        result.failed[:0] = tuning.failed if tuning is not None else []
        return result


def _run_grid(config: CompareConfig, command: str, progress: bool, runs: list[GridRun], grid: GridConfig,
              tuning: dict | None, report: bool) -> CompareResult:
    out = Path(config.out)
    metric_key = get_task(config.task).metric_key

    def record(i: int, status: str, error: str | None) -> dict:
        return collect_run(runs[i].entry, runs[i].seed, runs[i].run_dir, out, metric_key, status, error)

    code = provenance(list(dict.fromkeys(p for one in runs for p in one.run.plugins)))
    ran = run_tasks(run_one, runs, grid, progress, "smoe compare", lambda i, error: record(i, "failed", error),
                    lambda records, jobs: _write(config, records, command, tuning, jobs, code))
    for i in range(len(runs)):  # what the executor did not finish: the grid was interrupted
        ran.records.setdefault(i, record(i, "skipped", "not finished: the comparison was interrupted"))
    path = _write(config, [ran.records[i] for i in sorted(ran.records)], command, tuning, ran.jobs, code)
    page = None if ran.interrupted is not None or not report else write_report(out).html  # the margin recorded
    return CompareResult(results=path, report=page, failed=ran.failed, interrupted=ran.interrupted)


def _write(config: CompareConfig, records: list[dict], command: str, tuning: dict | None, jobs: int | str,
           code: dict) -> Path:
    return write_results(config.out, config.task, config.preset, config.device,
                         [entry.label for entry in config.entries], config.baseline, records, command,
                         None if config.margin is None else Margin.parse(config.margin), tuning, jobs, code)
