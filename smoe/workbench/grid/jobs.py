"""How a comparison grid runs: `GridConfig` (`--jobs`, `--threads`, `--cluster`), the executor it makes, and how
`--jobs auto` sizes it.

`--jobs auto` (`auto_jobs`): each run gets one thread per `FLOPS_PER_THREAD` of work in its training step (counted
by torch's FlopCounterMode on the first run left, at least one thread), and the cores are shared out among as many
runs as that leaves room for: the tiny presets (1-3 GFLOP a step) get one process per core, a run whose step
keeps every core busy gets the machine to itself. The executors are in `smoe.workbench.grid.executors`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from smoe._validate import check_int
from smoe.models.common import aux_losses
from smoe.plugins import loaded
from smoe.workbench.grid.executors import DaskCluster, LocalProcesses, Serial, local_workers
from smoe.workbench.run.config import RunConfig
from smoe.workbench.tasks import get_task

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


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


def describe(executor) -> str:
    """One line for the user: how the grid runs."""
    if isinstance(executor, LocalProcesses):
        return f"{executor.jobs} worker processes x {executor.threads} threads"
    if isinstance(executor, DaskCluster):
        return f"Dask cluster {executor.address}"
    return f"one run at a time in this process ({executor.threads or torch.get_num_threads()} threads)"
