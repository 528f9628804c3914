"""One compared run's life after its configuration: train (or resume, or skip), then evaluate and analyse, each
step skipped when its file is there for the final step; and the checks that a run folder holds this run.

A run folder holds `timing.json` (training wall time over every resume) beside the Trainer's files; a compared
run's TensorBoard folder is DIR/tb/<label>-s<seed> (`tb_folder`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from smoe._files import atomic_write
from smoe.workbench.run.analysis import ANALYSIS_FILE, analyze
from smoe.workbench.run.config import run_config_from_dict
from smoe.workbench.run.evaluate import eval_file, evaluate_model
from smoe.workbench.run.routing_view import read_view
from smoe.workbench.run.runner import load_run, train_run
from smoe.workbench.tasks import get_task
from smoe.workbench.train.checkpoint import checkpoint_steps
from smoe.workbench.train.run_folder import DamagedFileError, read_json, read_yaml
from smoe.workbench.train.trainer import config_differences

TIMING_FILE = "timing.json"


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


def train_one(run, run_dir: Path, report: Callable[[int], None]) -> int | None:
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


def evaluate_one(run, run_dir: Path, request: dict, device: str = "cpu",
                 say: Callable[[str], None] = lambda what: None) -> None:
    """Write analysis.json and routing_view.json (when the task has a probe set) and eval.json of a trained run,
    unless they are there for its final step (and, for eval.json, for the same request: `corruptions`,
    `capacities`, `bpr` of `evaluate_model`); say(what) is told each phase (the progress line)."""

    task = get_task(run.task)
    step = trained_step(run_dir)
    analysis, evaluation = read_json(run_dir / ANALYSIS_FILE), read_json(run_dir / eval_file(None))
    view = (analysis or {}).get("view", True) and (read_view(run_dir) or {}).get("step") != step  # pictures' data
    needs_analysis = run.data.probe_tokens > 0 and ((analysis or {}).get("step") != step or view)
    needs_eval = (evaluation is None or evaluation.get("step") != step or evaluation.get("request") != request
                  or "clean_bootstrap" not in evaluation)  # written before the bootstrap existed
    if not (needs_analysis or needs_eval):
        return
    say("loading the trained model")
    run, setup, step = load_run(run_dir, device)
    if needs_analysis:
        say("analysing routing")
        analyze(setup.model, setup.probe, run_dir, step, {"task": run.task, "router": run.router})
    if needs_eval:
        say(f"evaluating clean and {len(request['corruptions'])} corruptions")
        result = evaluate_model(setup.model, setup.evaluate, task.metric_key, task.higher_is_better,
                                scores=setup.scores, **request)
        atomic_write(run_dir / eval_file(None),
                     json.dumps({"step": step, "request": request, **result}, indent=1).encode())



def steps_done(run_dir: Path) -> int:
    """Steps a run folder already holds (final.json's, else the latest checkpoint's; 0 if damaged)."""
    steps = checkpoint_steps(run_dir / "checkpoints")
    try:
        return trained_step(run_dir) or (steps[-1] if steps else 0)
    except DamagedFileError:
        return 0
