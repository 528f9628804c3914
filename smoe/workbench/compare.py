"""`smoe compare`: entries (a router with options and config overrides) x seeds on one task, each trained through
the Trainer into DIR/runs/<label>-s<seed>/, evaluated clean and corrupted (`workbench.evaluate`), analysed
(`workbench.analysis`), gathered into DIR/results.json (schema v2, `workbench.results`, with the paired statistics
against the baseline entry of `workbench.verdicts`) and rendered as
DIR/report.md and DIR/report.html (`smoe.workbench.report.write_report`).

Entry syntax (entries are comma-separated):  [LABEL=]NAME[:OPTION=VALUE...][+KEY=VALUE...]
  NAME            a router or a layer-level method (`smoe routers`)
  :OPTION=VALUE   a router option (of a layer-level method: its own option, else its router's), as
                  `smoe bench layer --router` (values are Python literals, else strings): `topk:k=1`
  +KEY=VALUE      a config override of this entry only, as --set (`+rule=momentum`, `+model.moe.num_experts=8`)
  LABEL=          the entry's name in tables and run folders (letters, digits, `_ . -`); default: the entry text
e.g. `topk`, `ssr:p=0.1`, `topk+rule=momentum`, `adam=topk+rule=adam`, `s2moe`, `sup=topk+supervised=true`.

Resumable: a run with final.json (and its analysis and evaluation) is skipped, a run with a checkpoint is
resumed, a run folder without one starts over; a run folder written with another configuration is an error.
The comparison folder and each run folder have one writer (`smoe.workbench.run_folder.hold_folder`); a run whose
files are damaged is recorded as failed and the grid goes on.
`--steps N` compresses the preset's schedule to N steps (train.steps = schedule_steps = N; warm-up and checkpoint
intervals scaled by N / the preset's steps; as many evaluations as the preset has, evenly spaced, with no short
last interval: `even_interval`); --set and entry overrides still win.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from smoe._validate import check_choice, check_int
from smoe.layer import available_layers, layer_options
from smoe.routing import available_routers, router_options
from smoe.routing.registry import parse_router_spec
from smoe.workbench.analysis import ANALYSIS_FILE, analyze
from smoe.workbench.checkpoint import atomic_write, checkpoint_steps
from smoe.workbench.evaluate import default_sweep, eval_file, evaluate_model
from smoe.workbench.executors import GridProgress, Outcome, Report
from smoe.workbench.grid import GridConfig, describe, make_executor, step_flops
from smoe.workbench.report import write_report
from smoe.workbench.results import RESULTS_FILE, SCHEMA_VERSION
from smoe.workbench.routing_view import read_view
from smoe.workbench.run_config import RunConfig, resolve_config, run_config_from_dict
from smoe.workbench.run_folder import DamagedFileError, hold_folder, read_json, read_jsonl, read_yaml
from smoe.workbench.runner import load_run, train_run
from smoe.workbench.tasks import get_task
from smoe.workbench.trainer import TrainConfig, config_differences
from smoe.workbench.verdicts import with_statistics

LABEL = re.compile(r"[A-Za-z0-9_.-]+")
TIMING_FILE = "timing.json"


@dataclass(frozen=True)
class Entry:
    """One comparison entry: label, router (or layer-level method), router options, config overrides."""
    label: str
    router: str
    options: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        """The run-folder stem: the label with characters other than letters, digits and `_ . = -` as `-`."""
        return re.sub(r"[^A-Za-z0-9_.=-]+", "-", self.label).strip("-") or "entry"

    def config_overrides(self) -> list:
        """Overrides for `resolve_config`: the options as (key, value) pairs (`model.moe.router_options.<option>`,
        or `model.moe.method_options.<option>` for a layer-level method's own), then the +KEY=VALUE ones."""
        own = layer_options(self.router) if self.router in available_layers() else {}
        options = [(f"model.moe.{'method_options' if k in own else 'router_options'}.{k}", v)
                   for k, v in self.options.items()]
        return [*options, *self.overrides]

    def describe(self) -> dict:
        """The options field of results.json: router options and overrides."""
        return {**self.options, **dict(o.split("=", 1) for o in self.overrides)}


def parse_entry(text: str) -> Entry:
    """"[LABEL=]NAME[:OPTION=VALUE...][+KEY=VALUE...]" -> Entry (see the module docstring)."""
    spec = text.strip()
    label, sep, rest = spec.partition("=")
    if sep and LABEL.fullmatch(label) and label not in available_routers() + available_layers():
        spec = rest
    else:
        label = spec
    head, *overrides = spec.split("+")
    name, options = parse_router_spec(head)
    names = available_routers() + available_layers()
    if name not in names:
        raise ValueError(f"entry {text!r}: unknown router {name!r}; available: {', '.join(sorted(names))}")
    if name in available_routers():
        unknown = sorted(set(options) - set(router_options(name)))
        if unknown:
            raise ValueError(f"entry {text!r}: unknown option(s) {unknown} for router {name!r}; valid: "
                             f"{', '.join(router_options(name))}")
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key:
            raise ValueError(f"entry {text!r}: expected +KEY=VALUE, got {'+' + item!r}")
    return Entry(label=label, router=name, options=options, overrides=tuple(overrides))


def parse_entries(text: str) -> list[Entry]:
    """Comma-separated entries; labels and run folders must be distinct."""
    entries = [parse_entry(item) for item in text.split(",") if item.strip()]
    if not entries:
        raise ValueError("routers must name at least one entry, e.g. topk,xmoe")
    for attr in ("label", "folder"):
        seen = [getattr(e, attr) for e in entries]
        dupes = sorted({x for x in seen if seen.count(x) > 1})
        if dupes:
            raise ValueError(f"entries must have distinct {attr}s, got {dupes} more than once (set LABEL=)")
    return entries


@dataclass
class CompareConfig:
    """A comparison. corruptions: None = the task's default sweep (`smoe.workbench.evaluate.default_sweep`), [] = none;
    capacities: test-time capacity ratios to evaluate (with BPR on and off for routers that have it); baseline: the
    label every other entry is compared with (`workbench.verdicts`; None: the first entry)."""

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

    def __post_init__(self):
        get_task(self.task)
        check_int("seeds", self.seeds, low=1)
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

    def schedule_overrides(self) -> list[str]:
        """--steps N as overrides: the preset's schedule compressed to N steps (module docstring)."""
        if self.steps is None:
            return []
        base = TrainConfig(**get_task(self.task).presets[self.preset].get("train", {}))
        factor = self.steps / base.steps

        def scaled(value: int, low: int) -> int:
            return max(round(value * factor), low) if value else 0

        evals = even_interval(self.steps, base.steps / base.eval_every) if base.eval_every else 0
        return [f"train.steps={self.steps}", f"train.schedule_steps={self.steps}",
                f"train.warmup_steps={scaled(base.warmup_steps, 0)}", f"train.eval_every={evals}",
                f"train.checkpoint_every={scaled(base.checkpoint_every, 1)}"]

    def run_config(self, entry: Entry, seed: int):
        overrides = [*self.schedule_overrides(), *self.overrides, *entry.config_overrides()]
        try:
            return resolve_config(self.task, self.preset, router=entry.router, seed=seed, device=self.device,
                                  overrides=overrides)
        except ValueError as e:
            raise ValueError(f"entry {entry.label!r}: {e}") from e


def even_interval(steps: int, count: float) -> int:
    """The interval nearest steps / count (the smaller on ties) after whose last multiple at least half an interval
    remains before `steps`, so evaluations are evenly spaced and the final one (at `steps`) never follows a periodic
    one by a step or two."""
    target = steps / max(count, 1.0)
    fits = [e for e in range(1, steps + 1) if steps % e == 0 or steps % e >= e / 2]
    return min(fits, key=lambda e: (abs(e - target), e))


# ---------------------------------------------------------------- one run


def comparable(run) -> dict:
    """A RunConfig as a dict with every model field spelled out (defaults included, data-derived ones left out),
    so that a resolved config and one read back from config.yaml compare equal."""

    task = get_task(run.task)
    full = dataclasses.asdict(task.model_config(**run.model, **task.derived))
    return {**run.to_dict(), "model": {k: v for k, v in full.items() if k not in task.derived}}


def check_same_config(run, run_dir: Path) -> None:
    """ValueError when run_dir holds a run of another configuration (train.steps may differ: it extends)."""
    path = run_dir / "config.yaml"
    try:
        old = run_config_from_dict(read_yaml(path), path)
    except DamagedFileError:  # rewritten from the checkpoint's config on resume, or the run fails in the grid
        return
    diff = config_differences(comparable(old), comparable(run), ignore={("train", "steps")})
    if diff:
        raise ValueError(f"{run_dir} holds a run of another configuration ({'; '.join(diff)}); compare into "
                         f"another --out or remove that folder")


def trained_step(run_dir: Path) -> int | None:
    """The step of final.json, or None when the run has not finished."""
    final = read_json(run_dir / "final.json")
    return None if final is None else final.get("step")


def tb_folder(run_dir: Path) -> Path:
    """A compared run's TensorBoard folder: DIR/tb/<label>-s<seed>, so that `tensorboard --logdir DIR/tb` names
    every run by its label and seed."""
    return run_dir.parent.parent / "tb" / run_dir.name


def train_one(run, run_dir: Path, report: Report) -> int | None:
    """Train (or resume, or skip) one run, calling report(step) after every step; returns the signal that
    interrupted it, else None. A run folder of another configuration must have been refused before
    (`check_same_config`)."""

    step = trained_step(run_dir)
    if step is not None and step >= run.train.steps:
        return None
    resume = bool(checkpoint_steps(run_dir / "checkpoints"))  # without one the Trainer starts the folder over
    if not resume:  # and its TensorBoard folder starts over too
        shutil.rmtree(tb_folder(run_dir), ignore_errors=True)
    timing = read_json(run_dir / TIMING_FILE) or {"train_time_s": 0.0}
    started = time.perf_counter()
    result = train_run(run, run_dir, resume=resume, progress=False, hooks=[lambda step, outputs: report(step)],
                       tb_dir=tb_folder(run_dir))
    timing["train_time_s"] += time.perf_counter() - started
    atomic_write(run_dir / TIMING_FILE, json.dumps(timing).encode())
    return result.signal if result.status == "interrupted" else None


def evaluate_one(config: CompareConfig, run, run_dir: Path, say: Callable[[str], None] = lambda what: None) -> None:
    """Write analysis.json and routing_view.json (when the task has a probe set) and eval.json of a trained run,
    unless they are there for its final step (and, for eval.json, for the same corruptions and capacities);
    say(what) is told each phase (the progress line)."""

    task = get_task(run.task)
    request = {"corruptions": default_sweep(task.corruptions) if config.corruptions is None else config.corruptions,
               "capacities": config.capacities, "bpr": config.bpr}
    step = trained_step(run_dir)
    analysis, evaluation = read_json(run_dir / ANALYSIS_FILE), read_json(run_dir / eval_file(None))
    view = (analysis or {}).get("view", True) and (read_view(run_dir) or {}).get("step") != step  # pictures' data
    needs_analysis = run.data.probe_tokens > 0 and ((analysis or {}).get("step") != step or view)
    needs_eval = (evaluation is None or evaluation.get("step") != step or evaluation.get("request") != request
                  or "clean_bootstrap" not in evaluation)  # written before the bootstrap existed
    if not (needs_analysis or needs_eval):
        return
    say("loading the trained model")
    run, setup, step = load_run(run_dir, config.device)
    if needs_analysis:
        say("analysing routing")
        analyze(setup.model, setup.probe, run_dir, step, {"task": run.task, "router": run.router})
    if needs_eval:
        say(f"evaluating clean and {len(request['corruptions'])} corruptions")
        result = evaluate_model(setup.model, setup.evaluate, task.metric_key, task.higher_is_better,
                                scores=setup.scores, **request)
        atomic_write(run_dir / eval_file(None),
                     json.dumps({"step": step, "request": request, **result}, indent=1).encode())


# ---------------------------------------------------------------- results.json


def collect_run(entry: Entry, seed: int, run_dir: Path, out: Path, metric_key: str, status: str,
                error: str | None) -> dict:
    """The run's record in results.json (schema v2), from the files in its folder; a damaged file makes it a
    failed run (the error names the file and line)."""
    record: dict = {"router": entry.router, "label": entry.label, "seed": seed, "options": entry.describe(),
                    "run_dir": str(run_dir.relative_to(out)), "status": status, "error": error}
    try:
        return _add_run_files(record, run_dir, metric_key)
    except DamagedFileError as e:
        return {**record, "status": "failed", "error": f"{type(e).__name__}: {e}"}


def _add_run_files(record: dict, run_dir: Path, metric_key: str) -> dict:
    final = read_json(run_dir / "final.json")
    if final is None:
        return record
    valid, test = final.get("valid", {}), final.get("test", {})
    record["steps"] = final["step"]
    extras = {k: v for k, v in test.items() if k not in (metric_key, "loss")}  # e.g. unigram perplexity
    record["final"] = {"metric": test.get(metric_key), "valid_metric": valid.get(metric_key),
                       "valid_loss": valid.get("loss"), **extras}
    logged = read_jsonl(run_dir / "metrics.jsonl")
    record["curve"] = [{"step": r["step"], "valid_loss": r.get("loss"), "metric": r.get(metric_key)}
                       for r in logged if r["split"] == "valid"]
    rates = sorted(r["per_s"] for r in logged if r["split"] == "train" and "per_s" in r)
    if rates:
        record["tokens_per_s"] = rates[len(rates) // 2]  # median: robust to a stalled step
    timing = read_json(run_dir / TIMING_FILE)
    if timing:
        record["train_time_s"] = timing["train_time_s"]
    analysis = read_json(run_dir / ANALYSIS_FILE)
    if analysis:
        record["routing"] = analysis["routing"]
        per_token = [layer.get("experts_per_token") for layer in analysis["routing"]["layers"]]
        if per_token and all(isinstance(v, (int, float)) for v in per_token):
            record["final"]["experts_per_token"] = sum(per_token) / len(per_token)
        if "latent" in analysis:
            record["latent"] = analysis["latent"]
    evaluation = read_json(run_dir / eval_file(None))
    if evaluation:
        record["robustness"] = [{k: e[k] for k in ("corruption", "level", "severity", "metric")}
                                for e in evaluation["robustness"]]
        record["final"]["eval_time_s"] = evaluation["eval_time_s"]
        if evaluation.get("clean_bootstrap"):
            record["eval_sd"] = evaluation["clean_bootstrap"]["sd"]
    return record


def machine(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = f"{names[0]} x {len(names)}" if names else cpu
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "device": device,
            "python": platform.python_version()}


def write_results(config: CompareConfig, records: list[dict], command: str) -> Path:
    task = get_task(config.task)
    results = {"schema": SCHEMA_VERSION, "task": config.task, "preset": config.preset, "command": command,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "metric": {"name": task.metric_key, "higher_is_better": task.higher_is_better},
               "machine": machine(config.device), "runs": records,
               "entries": [entry.label for entry in config.entries]}
    results = with_statistics(results, config.baseline)
    path = Path(config.out) / RESULTS_FILE
    atomic_write(path, json.dumps(results, indent=1).encode())  # NaN / inf stay numbers, as the schema allows
    return path


# ---------------------------------------------------------------- the grid


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
            for seed in range(config.seeds) for entry in config.entries]
    for task in grid:
        if (task.run_dir / "config.yaml").exists():
            check_same_config(task.run, task.run_dir)
    return grid


def run_one(task: GridRun, report: Report) -> Outcome:
    """Train, evaluate and analyse one run, holding its folder (`report(step)` after every training step); its
    record in results.json. A run that raises is "failed" with its error; an interrupted training (checkpoint
    written) is "skipped"."""
    interrupted = None
    try:
        with hold_folder(task.run_dir):
            interrupted = train_one(task.run, task.run_dir, report)
            if interrupted is None:
                evaluate_one(task.config, task.run, task.run_dir, report)
        status, error = ("skipped", "interrupted") if interrupted is not None else ("done", None)
    except Exception as e:  # one failed run must not stop the grid
        status, error = "failed", f"{type(e).__name__}: {e}"
    record = collect_run(task.entry, task.seed, task.run_dir, Path(task.config.out),
                         get_task(task.config.task).metric_key, status, error)
    return Outcome(record, interrupted=interrupted)


@dataclass
class CompareResult:
    results: Path
    report: Path | None
    failed: list[str]
    interrupted: int | None  # the signal that stopped the grid


def run_compare(config: CompareConfig, command: str = "", progress: bool = True,
                grid: GridConfig | None = None) -> CompareResult:
    """Train, evaluate and analyse every (entry, seed) of `config` on the executor `grid` says (default: one run
    after another in this process; `smoe.workbench.grid`), then write results.json and the report. results.json is
    rewritten as runs end. A run that raises is recorded as failed and the grid goes on; an interrupted grid
    (SIGINT/SIGTERM: running trainings checkpoint and stop) records the runs not done as skipped. The comparison
    folder is held (one writer) throughout, each run folder by the process that runs it."""

    tasks = grid_runs(config)
    done = [min(_steps_done(t.run_dir), t.run.train.steps) for t in tasks]
    left = [t for t, d in zip(tasks, done) if d < t.run.train.steps]
    executor = make_executor(grid or GridConfig(), len(left), lambda: step_flops(left[0].run))
    with hold_folder(config.out):
        return _run_grid(config, command, progress, tasks, done, executor)


def _run_grid(config: CompareConfig, command: str, progress: bool, tasks: list[GridRun], done: list[int],
              executor) -> CompareResult:
    out = Path(config.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    metric_key = get_task(config.task).metric_key
    bar = GridProgress([t.name for t in tasks], [t.run.train.steps for t in tasks], done, progress)
    if progress:
        bar.write(f"smoe compare: {len(tasks)} runs, {sum(d < t.run.train.steps for t, d in zip(tasks, done))} to "
                  f"train; {describe(executor)}")
    records: dict[int, dict] = {}
    failed = []
    try:
        for i, outcome in executor.run(run_one, tasks, bar):
            task = tasks[i]
            record = outcome.value or collect_run(task.entry, task.seed, task.run_dir, out, metric_key, "failed",
                                                  outcome.error)
            if record["status"] == "failed":
                failed.append(f"{task.name}: {record['error']}")
                bar.write(f"smoe compare: {task.entry.label} seed {task.seed} failed: {record['error']}")
            records[i] = record
            write_results(config, [records[j] for j in sorted(records)], command)
    finally:
        bar.close()
    for i, task in enumerate(tasks):  # what the executor did not finish: the grid was interrupted
        records.setdefault(i, collect_run(task.entry, task.seed, task.run_dir, out, metric_key, "skipped",
                                          "not finished: the comparison was interrupted"))
    path = write_results(config, [records[i] for i in sorted(records)], command)
    report = None if executor.interrupted is not None else write_report(out).html
    return CompareResult(results=path, report=report, failed=failed, interrupted=executor.interrupted)


def _steps_done(run_dir: Path) -> int:
    """Steps a run folder already holds (final.json's, else the latest checkpoint's; 0 if damaged)."""
    steps = checkpoint_steps(run_dir / "checkpoints")
    try:
        return trained_step(run_dir) or (steps[-1] if steps else 0)
    except DamagedFileError:
        return 0
