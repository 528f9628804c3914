"""Per-entry tuning of a comparison: `smoe compare --tune train.lr=3e-4,1e-3,3e-3`.

Every entry gets the same budget: each value of the grid (the product of the `--tune` keys' values) is trained at
the tuning seeds TUNE_SEED_START, TUNE_SEED_START + 1, ... (disjoint from the comparison's seeds 0..N-1, so the
runs that choose are never the runs that are judged), with the comparison's configuration otherwise. The entry's
pick is the value with the best mean validation metric over the tuning seeds (the task's direction; a value with a
failed or non-finite run at any seed is never picked; ties go to the value listed first; nothing is picked before
every tuning run of the entry has ended). Only the validation split is read: the test split never takes part in the
choice. The comparison then runs every entry at its pick.

Tuning runs are ordinary run folders, DIR/tune/runs/<entry>-<key=value...>-s<seed>/ (TensorBoard in DIR/tune/tb/):
a finished one is never trained again, an interrupted one resumes from its checkpoint, and they run on the executor
`--jobs` / `--cluster` choose (`workbench.grid.jobs`). DIR/tune/tuning.json (rewritten as runs end) and the
"tuning" field of results.json record the grid, the tuning seeds, every run's validation metric and each pick:

    {"params": {key: [value, ...]}, "seeds": [int, ...], "split": "valid",
     "metric": {"name": str, "higher_is_better": bool},
     "runs": [{"label", "values": {key: value}, "seed", "status", "error", "valid_metric", "train_time_s",
               "run_dir"}],
     "picks": {label: {key: value} | null}}
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from smoe._files import atomic_write
from smoe._validate import check_int
from smoe.workbench.grid.executors import Outcome, StepCallback
from smoe.workbench.grid.jobs import GridConfig, run_tasks
from smoe.workbench.numbers import is_finite
from smoe.workbench.run.config import RunConfig, parse_override
from smoe.workbench.run.entry import Entry
from smoe.workbench.run.lifecycle import TIMING_FILE, check_same_config, train_one
from smoe.workbench.tasks import get_task
from smoe.workbench.train.run_folder import hold_folder, read_json

TUNE_SEED_START = 1000  # the first tuning seed; a comparison's seeds are 0..N-1 with N <= this
TUNE_DIR, TUNING_FILE = "tune", "tuning.json"


@dataclass(frozen=True)
class Tuning:
    """What every entry tunes: params, ((key, (value, ...)), ...) whose product is the grid (values as written,
    parsed like --set), at `seeds` tuning seeds from TUNE_SEED_START."""

    params: tuple[tuple[str, tuple[str, ...]], ...]
    seeds: int = 1

    def __post_init__(self):
        check_int("tune seeds", self.seeds, low=1)
        if not self.params:
            raise ValueError("tune must name at least one KEY=V1,V2,...")
        keys = [key for key, _ in self.params]
        if len(set(keys)) != len(keys):
            raise ValueError(f"tune must name each key once, got {keys}")
        for key, values in self.params:
            if not values or len(set(values)) != len(values):
                raise ValueError(f"tune {key}: give distinct values, e.g. {key}=3e-4,1e-3; got {list(values)}")
            for value in values:
                parse_override(f"{key}={value}")
        if len(self.points()) < 2:
            raise ValueError(f"tune needs at least two values to choose from, got {self.spec()}")

    def points(self) -> list[dict[str, str]]:
        """The grid: {key: value} for every combination, in the order the values are listed."""
        keys = [key for key, _ in self.params]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in self.params))]

    def seed_list(self) -> list[int]:
        return list(range(TUNE_SEED_START, TUNE_SEED_START + self.seeds))

    def spec(self) -> list[str]:
        """The --tune arguments: ["train.lr=3e-4,1e-3", ...]."""
        return [f"{key}={','.join(values)}" for key, values in self.params]

    def check_free(self, overrides: Sequence) -> None:
        """ValueError when an override (--set, or an entry's own) sets a tuned key: the tuned value would replace it."""
        for item in overrides:
            key = item[0] if isinstance(item, tuple) else item.partition("=")[0].strip()
            for tuned, _ in self.params:
                if key == tuned or tuned.endswith(f".{key}") or key.endswith(f".{tuned}"):
                    raise ValueError(f"tune {tuned}: {key} is also set to one value (--set or the entry's own); "
                                     f"tune it or set it, not both")


def parse_tune(specs: Sequence[str], seeds: int = 1) -> Tuning:
    """`--tune KEY=V1,V2,...` arguments (one per key) -> Tuning."""
    params = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"tune expects KEY=V1,V2,... (e.g. train.lr=3e-4,1e-3,3e-3), got {spec!r}")
        params.append((key.strip(), tuple(v.strip() for v in values.split(",") if v.strip())))
    return Tuning(tuple(params), seeds)


class Tunable(Protocol):
    """What tuning reads of a comparison (`workbench.grid.compare.CompareConfig` is one)."""

    task: str
    entries: list[Entry]
    out: str
    overrides: list[str]
    tune: Tuning | None

    def run_config(self, entry: Entry, seed: int) -> RunConfig: ...


Config = TypeVar("Config", bound=Tunable)


def point_name(point: dict[str, str]) -> str:
    """'train.lr=3e-4' (several keys joined by ' ')."""
    return " ".join(f"{key}={value}" for key, value in point.items())


@dataclass(frozen=True)
class TuneRun:
    """One tuning run: an entry at one point of the grid and one tuning seed (picklable: workers run it)."""

    entry: Entry
    point: dict
    seed: int
    run: RunConfig
    run_dir: Path
    out: Path
    metric_key: str

    @property
    def name(self) -> str:
        return f"tuning {self.entry.label} {point_name(self.point)} s{self.seed}"


def with_point(entry: Entry, point: dict[str, str]) -> Entry:
    """The entry with the point's values as its last overrides."""
    return dataclasses.replace(entry, overrides=(*entry.overrides, *(f"{k}={v}" for k, v in point.items())))


def tune_runs(config: Tunable) -> list[TuneRun]:
    """Every (tuning seed, entry, point) of `config.tune`, seed-major; every configuration resolved and every existing
    folder checked against it before anything is trained."""
    tuning, out = config.tune, Path(config.out)
    tuning.check_free(config.overrides)
    runs = []
    for entry in config.entries:
        tuning.check_free(entry.config_overrides())
    for seed in tuning.seed_list():
        for entry in config.entries:
            for point in tuning.points():
                tuned = with_point(entry, point)
                folder = dataclasses.replace(tuned, label=f"{entry.label}@{point_name(point)}").folder
                runs.append(TuneRun(entry, point, seed, config.run_config(tuned, seed),
                                    out / TUNE_DIR / "runs" / f"{folder}-s{seed}", out,
                                    get_task(config.task).metric_key))
    for one in runs:
        if (one.run_dir / "config.yaml").exists():
            check_same_config(one.run, one.run_dir)
    return runs


def tune_one(one: TuneRun, report: StepCallback) -> Outcome:
    """Train one tuning run (or resume, or skip it) holding its folder; its record reads the validation split only."""
    record = {"label": one.entry.label, "values": one.point, "seed": one.seed, "status": "done", "error": None,
              "run_dir": str(one.run_dir.relative_to(one.out))}
    interrupted = None
    try:
        with hold_folder(one.run_dir):
            interrupted = train_one(one.run, one.run_dir, report)
        if interrupted is not None:
            return Outcome({**record, "status": "skipped", "error": "interrupted"}, interrupted=interrupted)
        final = read_json(one.run_dir / "final.json") or {}
        timing = read_json(one.run_dir / TIMING_FILE) or {}
        record["valid_metric"] = final.get("valid", {}).get(one.metric_key)
        record["train_time_s"] = timing.get("train_time_s")
    except Exception as e:  # one failed run must not stop the tuning
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
    return Outcome(record)


@dataclass
class TuningResult:
    record: dict  # results.json's "tuning" (module docstring)
    path: Path  # DIR/tune/tuning.json
    failed: list[str]
    interrupted: int | None

    def apply(self, config: Config) -> Config:
        """`config` with every entry at its pick and no tuning left; ValueError naming the entries without a pick."""
        picks = self.record["picks"]
        missing = [label for label, pick in picks.items() if pick is None]
        if missing:
            raise ValueError(f"tuning: every run of {', '.join(missing)} failed or was not finite on the validation "
                             f"split, so there is no value to run the comparison at (see {self.path})")
        entries = [with_point(entry, picks[entry.label]) for entry in config.entries]
        return dataclasses.replace(config, entries=entries, tune=None)


def pick(records: Sequence[dict], points: Sequence[dict], seeds: Sequence[int], higher_is_better: bool) -> dict | None:
    """The point with the best mean validation metric over `seeds` among one entry's records; a point lacking a
    finite value at any seed is out; ties go to the earlier point. None until every (point, seed) has finished or
    failed (an interrupted tuning picks nothing), or when no point is left."""
    ended = {(json.dumps(r["values"], sort_keys=True), r["seed"]): r for r in records
             if r["status"] in ("done", "failed")}
    best, best_mean = None, math.nan
    for point in points:
        found = [ended.get((json.dumps(point, sort_keys=True), seed)) for seed in seeds]
        if any(r is None for r in found):
            return None
        values = [r.get("valid_metric") if r["status"] == "done" else None for r in found]
        if not all(is_finite(v) for v in values):
            continue
        mean = sum(values) / len(values)
        if best is None or (mean > best_mean if higher_is_better else mean < best_mean):
            best, best_mean = point, mean
    return best


def tuning_record(config: Tunable, records: Sequence[dict]) -> dict:
    """The tuning's record (module docstring) from its runs' records; picks from the finished runs."""
    tuning, task = config.tune, get_task(config.task)
    points, seeds = tuning.points(), tuning.seed_list()
    return {"params": {key: list(values) for key, values in tuning.params}, "seeds": seeds, "split": "valid",
            "metric": {"name": task.metric_key, "higher_is_better": task.higher_is_better}, "runs": list(records),
            "picks": {e.label: pick([r for r in records if r["label"] == e.label], points, seeds,
                                    task.higher_is_better) for e in config.entries}}


def run_tuning(config: Tunable, runs: Sequence[TuneRun], grid: GridConfig, progress: bool) -> TuningResult:
    """Train the tuning runs (`tune_runs`) on the executor `grid` says and pick each entry's value; DIR/tune/tuning.json
    is rewritten as runs end. The caller holds the comparison folder."""
    path = Path(config.out) / TUNE_DIR / TUNING_FILE

    def failure(i: int, error: str | None) -> dict:
        return {"label": runs[i].entry.label, "values": runs[i].point, "seed": runs[i].seed, "status": "failed",
                "error": error}

    ran = run_tasks(tune_one, runs, grid, progress, f"smoe compare: tuning {', '.join(config.tune.spec())}",
                    failure, lambda records, jobs: _write(path, tuning_record(config, records)))
    record = tuning_record(config, [ran.records[i] for i in sorted(ran.records)])
    _write(path, record)
    return TuningResult(record, path, ran.failed, ran.interrupted)


def _write(path: Path, record: dict) -> None:
    atomic_write(path, json.dumps(record, indent=1).encode())
