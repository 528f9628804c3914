"""The machine a run shares: its cores, and hints for a newcomer when it is busy."""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_hint(load: float | None = None, cores: int | None = None, threads: int | None = None) -> str | None:
    """A sentence when the machine is loaded (1-minute load average at least its cores) and torch runs several
    threads per process, which then mostly wait for each other; None otherwise. Arguments default to this machine's."""
    load = os.getloadavg()[0] if load is None else load
    cores = (os.cpu_count() or 1) if cores is None else cores
    threads = torch.get_num_threads() if threads is None else threads
    if load < cores or threads <= 1:
        return None
    return (f"note: the machine is loaded (load average {load:.1f} on {cores} cores) and torch runs {threads} threads "
            f"per process; with OMP_NUM_THREADS=1 (or fewer threads) it usually trains faster here")
