"""Run a function in N local processes joined in one torch.distributed process group.

For tests, benchmarks and notebooks on one machine; real jobs are launched by `torchrun`. Every rank is a fresh
`spawn`ed process joined over TCP on 127.0.0.1 (a free port), the group has a bounded timeout, and no rank can
hang the caller: once a rank fails or dies, the others get the group's timeout (plus a few seconds) to finish
or fail in turn, then every process still alive is killed and `LocalRunError` reports each rank's fate.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from smoe._validate import check_choice, check_float, check_int

_GRACE_S = 2.0  # beyond the group's timeout, for a survivor to report its own error after a peer failed


class LocalRunError(RuntimeError):
    """Some ranks of a local run failed; `errors` maps each failed rank to its traceback or fate."""

    def __init__(self, errors: dict[int, str]):
        self.errors = errors
        lines = [f"rank {r}: {text.strip().splitlines()[-1]}" for r, text in sorted(errors.items())]
        super().__init__("local distributed run failed\n" + "\n".join(lines))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(fn: Callable, world_size: int, args: tuple = (), *, backend: str = "gloo", timeout_s: float = 60.0,
              deadline_s: float = 600.0, num_threads: int | None = None) -> list:
    """fn(*args) on every rank of a fresh `world_size`-process group; returns the ranks' results in rank order.

    fn: a module-level (importable) function; inside it torch.distributed is initialised, so
    `dist.get_rank()` says which rank runs it. Results travel through `torch.save` (tensors, dicts, numbers).
    backend: "gloo" (CPU) or "nccl". timeout_s: the group's timeout, after which a collective waiting for a
    missing peer fails. deadline_s: the whole run. num_threads: torch intra-op threads per rank (None: torch's
    default). Raises LocalRunError if a rank raised, died or outlived the deadline.
    """
    check_int("world_size", world_size, low=1)
    check_choice("backend", backend, ("gloo", "nccl"))
    check_float("timeout_s", timeout_s, low=0.0, low_open=True)
    check_float("deadline_s", deadline_s, low=0.0, low_open=True)
    if num_threads is not None:
        check_int("num_threads", num_threads, low=1)
    spawn = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="smoe-run-") as out_dir:
        procs = [spawn.Process(target=_rank_main, daemon=True,
                               args=(fn, args, rank, world_size, port, backend, timeout_s, num_threads, out_dir))
                 for rank in range(world_size)]
        for p in procs:
            p.start()
        killed = set()
        try:
            _wait(procs, grace_s=timeout_s + _GRACE_S, deadline_s=deadline_s)
        finally:
            for rank, p in enumerate(procs):
                if p.is_alive():
                    p.kill()
                    killed.add(rank)
                p.join()
        outcomes = [_outcome(rank, p.exitcode, rank in killed, out_dir) for rank, p in enumerate(procs)]
    errors = {rank: text for rank, (ok, text) in enumerate(outcomes) if not ok}
    if errors:
        raise LocalRunError(errors)
    return [value for _, value in outcomes]


def _wait(procs: list, grace_s: float, deadline_s: float) -> None:
    """Until all exit, the deadline passes, or grace_s has passed since the first rank failed."""
    end = time.monotonic() + deadline_s
    while any(p.is_alive() for p in procs) and time.monotonic() < end:
        if any(p.exitcode not in (None, 0) for p in procs):
            end = min(end, time.monotonic() + grace_s)
        time.sleep(0.05)


def _outcome(rank: int, exitcode: int | None, killed: bool, out_dir: str) -> tuple[bool, object]:
    """(True, result) or (False, what went wrong) for one finished or killed rank."""
    path = os.path.join(out_dir, f"rank{rank}.pt")
    if os.path.exists(path):
        saved = torch.load(path, weights_only=False)  # written by our own child process
        return ("value" in saved), saved.get("value", saved.get("error"))
    if killed:
        return False, "still running at the deadline, or long after a peer failed; killed"
    fate = f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exited with code {exitcode}"
    return False, f"died without reporting ({fate})"


def _rank_main(fn: Callable, args: tuple, rank: int, world_size: int, port: int, backend: str, timeout_s: float,
               num_threads: int | None, out_dir: str) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    path = os.path.join(out_dir, f"rank{rank}.pt")
    try:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        value = fn(*args)
        dist.barrier()  # no rank tears the group down while a peer still reads from it
        dist.destroy_process_group()
        saved = {"value": value}
    except BaseException:
        saved = {"error": traceback.format_exc()}
    torch.save(saved, path + ".tmp")
    os.replace(path + ".tmp", path)
    if "error" in saved:  # skip interpreter teardown: a broken group's destructor may wait on a dead peer
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
