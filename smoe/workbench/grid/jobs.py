"""How a comparison grid runs: `GridConfig` (`--jobs`, `--threads`, `--cluster`), the executor it makes, how
`--jobs auto` sizes it, and `run_tasks`, which drives a list of runs through it with one progress line.

`--jobs auto` (`auto_jobs`): each run gets one thread per `FLOPS_PER_THREAD` of work in its training step (counted
by torch's FlopCounterMode on the first run left, at least one thread), and the cores are shared out among as many
runs as that leaves room for: the tiny presets (1-3 GFLOP a step) get one process per core, a run whose step
keeps every core busy gets the machine to itself. The executors are in `smoe.workbench.grid.executors`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from smoe._validate import check_int
from smoe.models.common import aux_losses
from smoe.plugins import loaded
from smoe.workbench.grid.executors import DaskCluster, GridProgress, LocalProcesses, Serial, local_workers
from smoe.workbench.run.config import RunConfig
from smoe.workbench.run.lifecycle import steps_done
from smoe.workbench.tasks import get_task
from smoe.workbench.train.hints import available_cores

FLOPS_PER_THREAD = 1e10  # training-step FLOPs that keep one more thread of a run busy (auto_jobs)


@dataclass
class GridConfig:
    """How a grid runs. jobs: local processes (1: one after another in this process; "auto": from the cores and
    the run size); threads: torch threads per run (default: the cores / jobs; with a cluster, the worker's own);
    cluster: a Dask scheduler address (tcp://host:8786) or local:N (a local Dask cluster of N workers)."""

    jobs: int | str = 1
    threads: int | None = None
    cluster: str | None = None

    def __post_init__(self):
        if self.jobs != "auto":
            check_int("jobs", self.jobs, low=1)
        if self.threads is not None:
            check_int("threads", self.threads, low=1)
        if self.cluster is not None:
            if self.jobs != 1:
                raise ValueError(f"jobs and cluster exclude each other (the cluster's workers run the grid), got "
                                 f"jobs={self.jobs!r} with cluster={self.cluster!r}")
            local_workers(self.cluster)  # checks local:N


def parse_jobs(text: str) -> int | str:
    """`--jobs`: a positive int or "auto"."""
    if text == "auto":
        return text
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ValueError(f"jobs must be a positive int or 'auto', got {text!r}")
    return jobs


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """--jobs, --threads, --cluster: how a grid of runs is executed (`smoe.workbench.grid.jobs`)."""
    def jobs(text: str) -> int | str:
        try:
            return parse_jobs(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument("--jobs", type=jobs, default=1, metavar="N|auto",
                   help="N worker processes on this machine (default 1: one run after another in this process); "
                        "auto: from the cores and the size of a run")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per run (default: the cores / --jobs; with --cluster, the worker's own)")
    p.add_argument("--cluster", default=None, metavar="ADDRESS|local:N",
                   help="run the grid on a Dask cluster: a scheduler address (tcp://host:8786; the run folders must "
                        "be on a file system every worker sees) or local:N (a local cluster of N workers); needs "
                        "pip install 'smoe[cluster]'")


def grid_config(args: argparse.Namespace) -> GridConfig:
    """The `GridConfig` of arguments added by `add_grid_arguments`."""
    return GridConfig(jobs=args.jobs, threads=args.threads, cluster=args.cluster)


def step_flops(run: RunConfig) -> float:
    """FLOPs of one training step of `run` (forward and backward of its micro-batches, FlopCounterMode). Builds the
    task, which loads (and caches, e.g. the tokenizer) its data; the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        setup = get_task(run.task).setup(run)
        generator = torch.Generator().manual_seed(run.seed)
        batch = next(iter(setup.train_batches(generator)))
        with FlopCounterMode(display=False) as counter:
            out = setup.loss(setup.model, batch, 0, generator)
            (out.loss + sum(aux_losses(out.moe).values(), torch.zeros(()))).backward()
    return float(counter.get_total_flops()) * run.train.grad_accum


def auto_jobs(cores: int, runs: int, flops: Callable[[], float]) -> int:
    """Local worker processes for `--jobs auto`: a run gets a thread per FLOPS_PER_THREAD of its step (`flops()`,
    asked only when there is a choice), and the cores are shared out among as many runs as that leaves room for."""
    if cores == 1 or runs <= 1:
        return 1
    threads = min(cores, max(1, int(flops() // FLOPS_PER_THREAD)))
    return max(1, min(runs, cores // threads))


def make_executor(grid: GridConfig, runs: int, flops: Callable[[], float]):
    """The executor of `grid` for `runs` tasks left; flops() -> one training step's FLOPs, for jobs="auto". Its
    workers import every plugin this process has imported (`smoe.plugins.loaded`)."""
    plugins = [plugin.spec for plugin in loaded()]
    if grid.cluster is not None:
        return DaskCluster(grid.cluster, grid.threads, plugins)
    cores = available_cores()
    jobs = auto_jobs(cores, runs, flops) if grid.jobs == "auto" else grid.jobs
    if jobs == 1:
        return Serial(grid.threads)
    return LocalProcesses(jobs, grid.threads or max(1, cores // jobs), plugins=plugins)


def concurrent_runs(executor) -> int | str:
    """How many runs the executor trains at once on this machine; "cluster" for a Dask cluster."""
    if isinstance(executor, DaskCluster):
        return "cluster"
    return executor.jobs if isinstance(executor, LocalProcesses) else 1


def describe(executor) -> str:
    """One line for the user: how the grid runs."""
    if isinstance(executor, LocalProcesses):
        return f"{executor.jobs} worker processes x {executor.threads} threads"
    if isinstance(executor, DaskCluster):
        return f"Dask cluster {executor.address}"
    return f"one run at a time in this process ({executor.threads or torch.get_num_threads()} threads)"


@dataclass
class TasksRun:
    """What `run_tasks` gave: the record of every task that ended (by index), "name: error" of the failed ones,
    the signal that interrupted the executor (None when every task ended), and how many runs it trained at once
    (`concurrent_runs`)."""

    records: dict[int, dict]
    failed: list[str]
    interrupted: int | None
    jobs: int | str


def run_tasks(fn: Callable, tasks: Sequence, grid: GridConfig, progress: bool, title: str,
              failure: Callable[[int, str | None], dict], save: Callable[[list[dict], int | str], object]) -> TasksRun:
    """Run `fn(task, report) -> Outcome` over `tasks` (each with .name, .run, a RunConfig, and .run_dir) on the
    executor of `grid`, with one progress line opened by `title`. A task's record is its outcome's value, else
    failure(index, error) (its worker died); a record with status "failed" is reported; save(the records so far,
    in task order, runs trained at once) after each."""
    done = [min(steps_done(t.run_dir), t.run.train.steps) for t in tasks]
    left = [t for t, d in zip(tasks, done) if d < t.run.train.steps]
    executor = make_executor(grid, len(left), lambda: step_flops(left[0].run))
    bar = GridProgress([t.name for t in tasks], [t.run.train.steps for t in tasks], done, progress)
    if progress:
        bar.write(f"{title}: {len(tasks)} runs, {len(left)} to train; {describe(executor)}")
    records: dict[int, dict] = {}
    failed = []
    try:
        for i, outcome in executor.run(fn, tasks, bar):
            records[i] = outcome.value or failure(i, outcome.error)
            if records[i]["status"] == "failed":
                failed.append(f"{tasks[i].name}: {records[i]['error']}")
                bar.write(f"{title}: {tasks[i].name} failed: {records[i]['error']}")
            save([records[j] for j in sorted(records)], concurrent_runs(executor))
    finally:
        bar.close()
    return TasksRun(records, failed, executor.interrupted, concurrent_runs(executor))
