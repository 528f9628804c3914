"""Executors of a grid of independent runs: one after another in this process, N local worker processes
(`--jobs`), or the workers of a Dask distributed cluster (`--cluster`).

An executor calls `fn(task, report) -> Outcome` once per task, wherever it runs it; `report(step)` tells the
grid's progress line how far the task's training is. The run folders are the source of truth, so an executor
never has to move state around: a task that is run again (its worker died, the grid was interrupted) resumes from
its folder. Each executor yields `(index, Outcome)` as tasks end, in any order, at most once per task; a task it
does not yield was not finished (the grid was interrupted: `executor.interrupted` is the signal).

- `Serial`: today's loop in this process. Ctrl-C: the Trainer checkpoints and stops, the grid stops.
- `LocalProcesses(jobs, threads)`: `jobs` spawned worker processes with `threads` torch threads each. A worker
  that dies (SIGKILL, the OOM killer) is replaced and its task run again (resuming from its checkpoint) up to
  `retries` times, then reported as failed. Ctrl-C / SIGTERM of this process: no task is started any more, every
  worker gets one SIGTERM (its Trainer checkpoints and stops) and the grid stops. The workers ignore SIGINT (the
  terminal sends it to them too), and a worker whose parent died stops its run with a checkpoint.
- `DaskCluster(address, threads)`: every task submitted to a Dask scheduler (`tcp://host:8786`), or to a
  `LocalCluster` of N single-threaded worker processes (`local:N`). The workers must see the run folders (a
  shared file system) and have smoe installed. A worker that dies is replaced by its nanny and Dask runs its task
  again (up to the scheduler's `distributed.scheduler.allowed-failures`, default 3), resuming from the checkpoint.
  Ctrl-C cancels the tasks not started; with `local:N` the workers are stopped (their runs lose the steps since
  their last checkpoint), on a remote cluster running tasks finish on their own. A Dask nanny starts its worker
  with `MALLOC_TRIM_THRESHOLD_=65536` (to give memory back to the system), which makes glibc return and re-fault
  every large tensor's pages: the tiny LM trained 1.6x slower for it. `local:N` clusters start their workers
  without it; on a remote cluster whose workers have it, the grid says so once.

Plugins (`smoe.plugins`): every worker, local or Dask, imports its own entry points and SMOE_PLUGINS, then the
plugins this process has imported (`plugins`, their specs), before it unpickles a task, so a router, task or rule
from a plugin builds there too; a plugin that fails to import there fails the task with the plugin's error. The
run folders and the plugin files must be where the workers see them.

Results do not depend on the executor at the same number of threads per run. The number of threads changes the
order of floating-point sums (around 1e-7 relative in one step), and training amplifies that: the demo grid's
final perplexities differ by up to 2 % between 2-thread and 1-thread runs. A comparison's entries always run
with the same threads, so its paired differences are unaffected; compare runs across comparisons at equal
threads. `smoe.workbench.grid.jobs` chooses the executor.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

import torch
from tqdm import tqdm

from smoe._validate import check_int
from smoe.plugins import load_all
from smoe.workbench.train.signals import StopSignals

RETRIES = 2  # times a task whose local worker died is run again
CLUSTER_EXTRA = "pip install 'smoe[cluster]'"
TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"  # what a Dask nanny sets for its worker (65536; module docstring)
TRIM_KEY = f"distributed.nanny.pre-spawn-environ.{TRIM_ENV}"

StepCallback = Callable[[int | str], None]  # a training step, or the phase a run is in


@dataclass
class Outcome:
    """What running a task gave: its value (a results.json record), or why there is none (error), and the signal
    that interrupted it, if one did."""

    value: dict | None = None
    error: str | None = None
    interrupted: int | None = None


def local_workers(cluster: str) -> int | None:
    """N of a "local:N" cluster, None for a scheduler address."""
    if not cluster.startswith("local:"):
        if not cluster.strip():
            raise ValueError("cluster must be a scheduler address (tcp://host:8786) or local:N, got ''")
        return None
    n = cluster.removeprefix("local:")
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"cluster must be local:N with N >= 1 workers, or a scheduler address, got {cluster!r}")
    return int(n)


# ---------------------------------------------------------------- progress and signals


class GridProgress:
    """One tqdm line for the whole grid: training steps of every run (the time left comes from their average
    rate since the start, so it includes evaluation), and runs done / running / left."""

    def __init__(self, names: Sequence[str], steps: Sequence[int], done: Sequence[int], enabled: bool):
        self.names, self.steps, self.at = list(names), list(steps), list(done)
        self.running: set[int] = set()
        self.phase: dict[int, str] = {}
        self.finished = 0
        self.bar = tqdm(total=sum(steps), initial=sum(done), unit="step", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0, desc=self._describe())

    def _describe(self) -> str:
        left = len(self.steps) - self.finished - len(self.running)
        return f"runs {self.finished} done, {len(self.running)} running, {left} left"

    def start(self, i: int) -> None:
        self.running.add(i)
        self._refresh()

    def step(self, i: int, step: int | str) -> None:
        """Task i's report: its training reached `step`, or (a str) the phase it is in now (evaluating, ...)."""
        if isinstance(step, str):
            self.phase[i] = step
            self._refresh()
        else:
            self._advance(i, step)

    def finish(self, i: int) -> None:
        self._advance(i, self.steps[i])
        self.running.discard(i)
        self.phase.pop(i, None)
        self.finished += 1
        self._refresh()

    def stop(self, i: int) -> None:
        """Task i stopped without finishing (it will run again, or the grid was interrupted)."""
        self.running.discard(i)
        self.phase.pop(i, None)
        self._refresh()

    def write(self, text: str) -> None:
        """A message above the progress line."""
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

    def _advance(self, i: int, step: int) -> None:
        if step > self.at[i]:
            self.bar.update(step - self.at[i])
            self.at[i] = step

    def _refresh(self) -> None:
        self.bar.set_description(self._describe(), False)
        self.bar.set_postfix_str(", ".join(f"{self.names[i]}: {self.phase[i]}" if i in self.phase else self.names[i]
                                           for i in sorted(self.running)[:3]))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (None: unchanged) for the block."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- executors


class Serial:
    """Every task in order in this process (with `threads` torch threads, default unchanged)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self.interrupted: int | None = None

    def run(self, fn: Callable, tasks: Sequence, progress: GridProgress) -> Iterator[tuple[int, Outcome]]:
        with StopSignals() as stop, torch_threads(self.threads):
            for i, task in enumerate(tasks):
                if stop.signum is not None:  # a signal outside training (during evaluation)
                    self.interrupted = stop.signum
                    return
                progress.start(i)
                outcome = fn(task, lambda step, i=i: progress.step(i, step))
                if outcome.interrupted is not None:
                    progress.stop(i)
                    self.interrupted = outcome.interrupted
                    yield i, outcome
                    return
                progress.finish(i)
                yield i, outcome


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    task: int | None = None
    signalled: bool = False


class LocalProcesses:
    """`jobs` spawned worker processes on this machine, `threads` torch threads each (module docstring)."""

    def __init__(self, jobs: int, threads: int, retries: int = RETRIES, plugins: Sequence[str] = ()):
        check_int("jobs", jobs, low=1)
        check_int("threads", threads, low=1)
        check_int("retries", retries, low=0)
        self.jobs, self.threads, self.retries, self.plugins = jobs, threads, retries, tuple(plugins)
        self.interrupted: int | None = None

    def run(self, fn: Callable, tasks: Sequence, progress: GridProgress) -> Iterator[tuple[int, Outcome]]:
        context = multiprocessing.get_context("spawn")
        todo, deaths, workers = deque(range(len(tasks))), Counter(), []
        with StopSignals() as stop:
            try:
                while todo or any(w.task is not None for w in workers):
                    if self.interrupted is None and stop.signum is not None:
                        self.interrupted = stop.signum
                    if self.interrupted is not None:
                        todo.clear()
                        self._signal_busy(workers)
                    else:
                        self._assign(context, fn, tasks, todo, workers, progress)
                    busy = [w for w in workers if w.task is not None]
                    ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5))
                    for w in busy:
                        if w.conn in ready or w.process.sentinel in ready:
                            yield from self._receive(w, workers, todo, deaths, progress)
            finally:
                _shut_down(workers)

    def _assign(self, context, fn, tasks, todo, workers, progress) -> None:
        """Hand tasks to idle workers, starting workers up to `jobs`."""
        for w in [w for w in workers if w.task is None and not w.process.is_alive()]:
            workers.remove(w)  # an idle worker that died holds nothing
        idle = [w for w in workers if w.task is None]
        while todo and (idle or len(workers) < self.jobs):
            if idle:
                w = idle.pop()
            else:
                parent, child = context.Pipe()
                process = context.Process(target=_work, args=(child, fn, self.threads, os.getpid(), self.plugins),
                                          daemon=True,
                                          name=f"smoe-grid-{len(workers)}")
                process.start()
                child.close()
                w = _Worker(process, parent)
                workers.append(w)
            w.task = todo.popleft()
            progress.start(w.task)
            with contextlib.suppress(OSError):  # a worker that died meanwhile: `_receive` puts the task back
                w.conn.send((w.task, pickle.dumps(tasks[w.task])))

    def _receive(self, w: _Worker, workers, todo, deaths, progress) -> Iterator[tuple[int, Outcome]]:
        """Every message worker w has sent; then, if it died holding a task, run that task again or fail it."""
        try:
            while w.task is not None and w.conn.poll():
                kind, i, payload = w.conn.recv()
                if kind == "step":
                    progress.step(i, payload)
                    continue
                w.task = None
                if payload.interrupted is not None:
                    self.interrupted = self.interrupted or payload.interrupted
                    progress.stop(i)
                else:
                    progress.finish(i)
                yield i, payload
        except (EOFError, OSError):  # it died; what it sent before has been read
            w.process.join(5)
        if w.process.is_alive():
            return
        workers.remove(w)
        w.conn.close()
        if w.task is None:
            return
        i, w.task = w.task, None
        progress.stop(i)
        if self.interrupted is not None:
            return  # stopped by our SIGTERM: the run resumes from its checkpoint next time
        deaths[i] += 1
        cause = _exit_cause(w.process.exitcode)
        if deaths[i] <= self.retries:
            progress.write(f"smoe grid: the worker running {progress.names[i]} died ({cause}); running it again "
                           f"from its last checkpoint")
            todo.appendleft(i)
        else:
            yield i, Outcome(error=f"WorkerDied: its worker process died {deaths[i]} times (last: {cause})")

    def _signal_busy(self, workers: list[_Worker]) -> None:
        for w in workers:
            if w.task is not None and not w.signalled:
                w.signalled = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.process.pid, signal.SIGTERM)


def _exit_cause(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _shut_down(workers: list[_Worker], grace: float = 30.0) -> None:
    """Ask idle workers to exit, wait for all (a signalled one is checkpointing), then terminate what is left."""
    for w in workers:
        with contextlib.suppress(OSError):
            w.conn.send(None)
    deadline = time.monotonic() + grace
    for w in workers:
        w.process.join(max(deadline - time.monotonic(), 0.1))
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(5)
        w.conn.close()


def _call(fn: Callable, plugins: Sequence[str], task: bytes, report: StepCallback) -> Outcome:
    """fn(the pickled task, report), the plugins imported first (they may define what the task holds): the
    worker's own entry points and SMOE_PLUGINS, as the command line does, then the parent's (`plugins`)."""
    load_all(plugins)
    return fn(pickle.loads(task), report)


def _work(conn, fn: Callable, threads: int, parent: int, plugins: Sequence[str]) -> None:
    """A worker process: run the tasks the parent sends (pickled) until it sends None (or dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C: the parent decides and sends SIGTERM
    torch.set_num_threads(threads)
    tqdm.set_lock(threading.RLock())  # not a semaphore, which os._exit below would leave to the resource tracker

    def report(i: int, step: int) -> None:
        if os.getppid() != parent:  # orphaned: checkpoint and stop (the Trainer handles SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        conn.send(("step", i, step))

    try:
        while (job := conn.recv()) is not None:
            i, task = job
            try:
                outcome = _call(fn, plugins, task, lambda step, i=i: report(i, step))
            except BaseException as e:  # fn records its own failures; this is what escaped it
                outcome = Outcome(error=f"{type(e).__name__}: {e}")
            conn.send(("done", i, outcome))
    except (EOFError, OSError):  # the parent is gone
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # every file of the runs is written and closed; the interpreter's clean-up takes seconds


class DaskCluster:
    """Tasks run on the workers of a Dask distributed cluster (module docstring). Needs `smoe[cluster]`."""

    def __init__(self, address: str, threads: int | None = None, plugins: Sequence[str] = ()):
        try:
            import distributed
        except ImportError as e:
            raise ImportError(f"--cluster runs the grid on Dask distributed, which is not installed: "
                              f"{CLUSTER_EXTRA}") from e
        self.distributed = distributed
        self.address, self.threads, self.plugins = address, threads, tuple(plugins)
        self.workers = local_workers(address)
        self.interrupted: int | None = None

    @contextlib.contextmanager
    def client(self):
        if self.workers is None:
            try:
                client = self.distributed.Client(self.address)
            except OSError as e:  # refused or timed out (distributed.comm.timeouts.connect, 30 s by default)
                raise ValueError(f"cluster: cannot reach the Dask scheduler at {self.address} ({e}); check the address "
                                 "and that the scheduler runs, or use local:N") from e
            with client:
                yield client
            return
        import dask

        with dask.config.set({TRIM_KEY: None}):  # module docstring: malloc trimming slows torch 1.6x
            cluster = self.distributed.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                    dashboard_address=None, silence_logs=40)
        try:
            with self.distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()

    def run(self, fn: Callable, tasks: Sequence, progress: GridProgress) -> Iterator[tuple[int, Outcome]]:
        topic = f"smoe-grid-{uuid.uuid4().hex}"
        events: queue.SimpleQueue = queue.SimpleQueue()
        with self.client() as client, StopSignals() as stop:
            client.subscribe_topic(topic, lambda event: events.put(event[1]))
            if trimming := trimming_workers(client):
                progress.write(f"smoe: {len(trimming)} Dask worker(s) run with {TRIM_ENV} set (Dask's default for "
                               f"workers under a nanny), which makes torch about 1.6x slower; start them with "
                               f"{TRIM_KEY} set to null in their Dask config (README, 'Many runs at once')")
            futures = {i: client.submit(_dask_task, fn, pickle.dumps(task), i, self.threads, topic, self.plugins,
                                        key=f"{topic}-{i}", pure=False, priority=len(tasks) - i)
                       for i, task in enumerate(tasks)}
            try:
                while futures and stop.signum is None:
                    with contextlib.suppress(queue.Empty):
                        kind, i, step = events.get(timeout=0.5)
                        if kind == "start":
                            progress.start(i)
                        progress.step(i, step)
                    for i in [i for i, future in futures.items() if future.done()]:
                        future = futures.pop(i)
                        progress.finish(i)
                        yield i, future.result() if future.status == "finished" else Outcome(error=_failure(future))
            finally:
                self.interrupted = stop.signum
                if futures:
                    client.cancel(list(futures.values()))
                client.unsubscribe_topic(topic)


def trimming_workers(client) -> list[str]:
    """Addresses of the client's workers whose malloc returns freed memory to the system at 64 KiB (`TRIM_ENV`)."""
    return sorted(address for address, value in client.run(os.environ.get, TRIM_ENV).items() if value is not None)


def _failure(future) -> str:
    """Why a Dask task ended without a value (KilledWorker: its workers died allowed-failures times)."""
    try:
        error = future.exception()
    except BaseException as e:  # cancelled
        error = e
    return f"{type(error).__name__}: {error}"


def _dask_task(fn: Callable, task: bytes, i: int, threads: int | None, topic: str, plugins: Sequence[str]) -> Outcome:
    """A task (pickled) on a Dask worker, the plugins imported first: its progress goes to the client as events of
    `topic`."""
    from distributed import get_worker

    worker = get_worker()
    if threads is not None:
        torch.set_num_threads(threads)
    worker.log_event(topic, ("start", i, 0))
    return _call(fn, plugins, task, lambda step: worker.log_event(topic, ("step", i, step)))
