"""The parallel grid: `--jobs N` and `--cluster local:N` give the runs of one after another in one process; a worker
killed mid-run is run again from its checkpoint (or fails, and a re-run finishes the grid), nothing lost or
counted twice; Ctrl-C stops the workers and a re-run resumes; `--cluster` without Dask says what to install; the
choice of executor (`--jobs auto`) and its arguments."""

import dataclasses
import functools
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from smoe.cli import main
from smoe.workbench.grid.compare import CompareConfig, grid_runs, run_compare, run_one
from smoe.workbench.grid.executors import (
    CLUSTER_EXTRA,
    DaskCluster,
    GridProgress,
    LocalProcesses,
    Outcome,
    Serial,
    trimming_workers,
)
from smoe.workbench.grid.jobs import GridConfig, auto_jobs, make_executor, parse_jobs, step_flops
from smoe.workbench.results.schema import load_results
from smoe.workbench.run.entry import parse_entries

TINY = ["model.d_model=16", "model.num_layers=2", "model.moe_every=1", "model.num_heads=2", "model.ffn_hidden=16",
        "train.batch_size=16", "train.log_every=1", "data.probe_tokens=340"]
TIMING = ("train_time_s", "tokens_per_s", "eval_time_s", "load_average")  # wall-clock and machine figures, never
# equal between two runs


def config(out) -> CompareConfig:
    """2 entries x 2 seeds of 6 steps (checkpoint every 3, eval every 2) of a small V-MoE on digits."""
    return CompareConfig(task="digits", entries=parse_entries("topk,expert_choice"), out=str(out), seeds=2, steps=6,
                         overrides=TINY, corruptions=["noise:1"])


def numbers(out) -> dict:
    """{(label, seed): the run's record less its timings}; every run done, and no run twice."""
    runs = load_results(out)["runs"]
    keys = [(r["label"], r["seed"]) for r in runs]
    assert sorted(keys) == sorted(set(keys)) == [("expert_choice", 0), ("expert_choice", 1), ("topk", 0), ("topk", 1)]
    assert all(r["status"] == "done" for r in runs), [(r["label"], r["seed"], r["error"]) for r in runs]
    return {(r["label"], r["seed"]): {**{k: v for k, v in r.items() if k not in TIMING},
                                      "final": {k: v for k, v in r["final"].items() if k not in TIMING}}
            for r in runs}


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


@pytest.fixture(scope="module", autouse=True)
def no_report():
    """The report is test_report's business; rendering it (plots of every run) would take most of this file's time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("smoe.workbench.grid.compare.write_report",
                      lambda out: SimpleNamespace(html=Path(out) / "r.html"))
        yield


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict:
    """The reference: every run one after another in this process, one thread each."""
    out = tmp_path_factory.mktemp("serial")
    result = run_compare(config(out), progress=False, grid=GridConfig(threads=1))
    assert result.failed == [] and result.interrupted is None
    return numbers(out)


def run_one_killed_once(marker: Path, task, report):
    """run_one, but the first attempt at "topk s0" SIGKILLs its own process after step 4 (checkpoint: step 3)."""
    def kill_at_step_4(step: int) -> None:
        report(step)
        if task.name == "topk s0" and step == 4 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    return run_one(task, kill_at_step_4)


class Steps(GridProgress):
    """GridProgress that records the training steps reported (not the phases), per task."""
    reported: dict

    def step(self, i, step):
        if isinstance(step, int):
            self.reported.setdefault(i, []).append(step)
        super().step(i, step)


# ---------------------------------------------------------------- same results on every executor


@pytest.mark.slow
def test_two_local_workers_give_the_serial_runs(tmp_path, serial):
    result = run_compare(config(tmp_path), progress=False, grid=GridConfig(jobs=2, threads=1))
    assert result.failed == [] and result.interrupted is None and result.report is not None
    assert numbers(tmp_path) == serial


@pytest.mark.slow
def test_a_local_dask_cluster_gives_the_serial_runs_and_reruns_a_killed_worker(tmp_path, serial, monkeypatch):
    pytest.importorskip("distributed")
    out = tmp_path / "cmp"
    # what the workers run: the first attempt at topk s0 dies at step 4 (pickled by reference: this module's function)
    monkeypatch.setattr("smoe.workbench.grid.compare.run_one",
                        functools.partial(run_one_killed_once, tmp_path / "killed"))
    result = run_compare(config(out), progress=False, grid=GridConfig(cluster="local:2", threads=1))
    assert (tmp_path / "killed").exists()  # the worker died; its nanny started another, Dask ran the task again
    assert result.failed == [] and result.interrupted is None and numbers(out) == serial
    assert logged_steps(out / "runs/topk-s0") == [1, 2, 3, 4, 5, 6]  # resumed at step 3, nothing logged twice


def test_a_local_dask_cluster_starts_its_workers_without_malloc_trimming():
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its workers, which slows torch; `local:N` unsets it."""
    pytest.importorskip("distributed")
    executor = DaskCluster("local:1")
    with executor.client() as client:
        assert trimming_workers(client) == []
        assert list(client.run(os.environ.get, "OMP_NUM_THREADS").values()) == ["1"]  # Dask's other settings stay


# ---------------------------------------------------------------- a worker that dies, Ctrl-C


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_and_a_rerun_finishes_the_grid(tmp_path, serial, monkeypatch):
    out = tmp_path / "cmp"
    tasks = grid_runs(config(out))
    progress = GridProgress([t.name for t in tasks], [6] * 4, [0] * 4, False)
    executor = LocalProcesses(jobs=2, threads=1, retries=0)
    outcomes = dict(executor.run(functools.partial(run_one_killed_once, tmp_path / "killed"), tasks, progress))
    assert sorted(outcomes) == [0, 1, 2, 3] and executor.interrupted is None
    assert outcomes[0].value is None and outcomes[0].error.startswith("WorkerDied: its worker process died 1 times "
                                                                      "(last: killed by SIGKILL)")
    assert all(outcomes[i].value["status"] == "done" for i in (1, 2, 3))

    monkeypatch.setattr(Steps, "reported", {}, raising=False)
    monkeypatch.setattr("smoe.workbench.grid.jobs.GridProgress", Steps)
    result = run_compare(config(out), progress=False, grid=GridConfig(jobs=2, threads=1))
    assert result.failed == [] and numbers(out) == serial
    assert Steps.reported == {0: [4, 5, 6]}  # only the killed run trained, from its checkpoint at step 3
    assert logged_steps(out / "runs/topk-s0") == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_a_rerun_resumes(tmp_path, serial, monkeypatch):
    sent = []

    def ctrl_c(self, i, step):  # once, when the first run reaches step 2
        if step == 2 and not sent:
            sent.append(i)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(GridProgress, "step", ctrl_c)
    result = run_compare(config(tmp_path), progress=False, grid=GridConfig(jobs=2, threads=1))
    assert result.interrupted == signal.SIGINT and result.report is None and result.failed == []
    runs = load_results(tmp_path)["runs"]
    assert len(runs) == 4 and {r["status"] for r in runs[2:]} == {"skipped"}  # seed 1 never started
    monkeypatch.undo()
    assert run_compare(config(tmp_path), progress=False, grid=GridConfig(jobs=2, threads=1)).interrupted is None
    assert numbers(tmp_path) == serial


def fail_or_die(marker: Path, task: int, report) -> Outcome:
    """Task 0 kills its worker the first time; task 1 raises (outside what fn records); the others return."""
    report(1)
    if task == 0 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if task == 1:
        raise RuntimeError("boom")
    return Outcome({"task": task})


@pytest.mark.slow
def test_local_workers_run_a_dead_workers_task_again_and_report_errors(tmp_path):
    progress = GridProgress(["a", "b", "c", "d"], [1] * 4, [0] * 4, False)
    executor = LocalProcesses(jobs=2, threads=1, retries=1)
    outcomes = dict(executor.run(functools.partial(fail_or_die, tmp_path / "died"), [0, 1, 2, 3], progress))
    assert sorted(outcomes) == [0, 1, 2, 3] and executor.interrupted is None and (tmp_path / "died").exists()
    assert outcomes[0].value["task"] == 0  # run again
    assert outcomes[1] == Outcome(error="RuntimeError: boom") and progress.finished == 4


# ---------------------------------------------------------------- choosing the executor; bad arguments


def test_cluster_without_dask_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code = main(["compare", "--task", "digits", "--routers", "topk", "--seeds", "1", "--steps", "2",
                 "--out", str(tmp_path / "cmp"), "--cluster", "local:2"])
    assert code == 2
    assert f"--cluster runs the grid on Dask distributed, which is not installed: {CLUSTER_EXTRA}" in \
        capsys.readouterr().err
    assert not (tmp_path / "cmp" / "runs").exists()


def test_auto_jobs_from_the_cores_and_the_size_of_a_step():
    tiny, large = lambda: 3e9, lambda: 4e11  # lm-bbc tiny and small (FlopCounterMode)
    assert auto_jobs(cores=2, runs=8, flops=tiny) == 2
    assert auto_jobs(cores=16, runs=8, flops=tiny) == 8  # never more workers than runs
    assert auto_jobs(cores=2, runs=8, flops=large) == 1
    assert auto_jobs(cores=64, runs=8, flops=lambda: 1.6e11) == 4  # 16 threads a run
    assert auto_jobs(cores=1, runs=8, flops=lambda: pytest.fail("no choice to make")) == 1
    assert auto_jobs(cores=8, runs=1, flops=lambda: pytest.fail("no choice to make")) == 1


def test_step_flops_counts_one_training_step_and_leaves_the_random_state():
    run = config("x").run_config(parse_entries("topk")[0], seed=0)
    state = torch.get_rng_state()
    flops = step_flops(run)
    assert torch.equal(torch.get_rng_state(), state)
    assert 4e6 < flops < 2e7  # ~ 6 x 5k active parameters x 16 images of 17 tokens
    assert step_flops(dataclasses.replace(run, train=dataclasses.replace(run.train, grad_accum=2))) == 2 * flops


def test_make_executor(monkeypatch):
    monkeypatch.setattr("smoe.workbench.grid.jobs.available_cores", lambda: 8)
    assert isinstance(make_executor(GridConfig(), 4, pytest.fail), Serial)
    local = make_executor(GridConfig(jobs=2), 4, pytest.fail)
    assert isinstance(local, LocalProcesses) and (local.jobs, local.threads) == (2, 4)
    local = make_executor(GridConfig(jobs="auto", threads=1), 4, lambda: 1e9)
    assert (local.jobs, local.threads) == (4, 1)


@pytest.mark.parametrize("kw, match", [
    ({"jobs": 0}, "jobs must be >= 1, got 0"),
    ({"jobs": "many"}, "jobs must be an int, got 'many'"),
    ({"threads": 0}, "threads must be >= 1, got 0"),
    ({"jobs": 2, "cluster": "local:2"}, "jobs and cluster exclude each other"),
    ({"cluster": "local:0"}, "cluster must be local:N with N >= 1 workers, or a scheduler address, got 'local:0'"),
    ({"cluster": ""}, "cluster must be a scheduler address"),
])
def test_bad_grid_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        GridConfig(**kw)


def test_jobs_argument(tmp_path, capsys):
    assert parse_jobs("auto") == "auto" and parse_jobs("3") == 3
    with pytest.raises(SystemExit):
        main(["compare", "--task", "digits", "--routers", "topk", "--out", str(tmp_path), "--jobs", "0"])
    assert "--jobs: jobs must be a positive int or 'auto', got '0'" in capsys.readouterr().err


def test_progress_counts_runs_and_steps():
    progress = GridProgress(["a s0", "b s0", "a s1"], [10, 10, 10], [10, 4, 0], False)
    assert sum(progress.at) == 14
    progress.start(1)
    progress.step(1, 6)
    progress.start(2)
    progress.finish(1)
    assert (progress.at, progress.finished, progress.running) == ([10, 10, 0], 1, {2})
    assert progress.bar.desc.startswith("runs 1 done, 1 running, 1 left")


def test_a_scheduler_that_cannot_be_reached_is_a_clear_error(tmp_path, capsys):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["compare", "--task", "digits", "--routers", "topk", "--seeds", "1", "--steps", "2",
                     "--out", str(tmp_path / "cmp"), "--cluster", "tcp://127.0.0.1:1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "smoe compare: error: cluster: cannot reach the Dask scheduler at tcp://127.0.0.1:1 (" in err
    assert not any((tmp_path / "cmp").rglob("config.yaml"))  # no run started
