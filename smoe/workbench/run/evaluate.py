"""`smoe eval RUN_DIR`: the task metric of a trained run, clean, under input corruptions, at test-time capacities
(V-MoE's compute trade-off, with and without Batch Prioritized Routing) and with k experts at inference.

Writes RUN_DIR/eval.json (RUN_DIR/eval-k<K>.json with --eval-k K):
  {"split", "metric": {"name", "higher_is_better"}, "eval_k", "clean": {metrics}, "eval_time_s",
   "clean_bootstrap": {"sd", "samples", "resamples"} or null,   # evaluation noise of the clean metric
   "robustness": [{"corruption", "level", "severity", "metric", "metrics": {...}}],     # level 0 = clean
   "capacity": [{"capacity", "bpr": bool, "metric", "dropped_fraction"}]}

clean_bootstrap: the sd of the clean metric over resamples (with replacement) of the split's samples (test windows,
images), from the task's per-sample scores (`TaskSetup.scores`): the evaluation noise of this one number.

Corruptions are `smoe.data.corrupt`'s "NAME:LEVEL" with a fixed seed, so every router and seed sees the same
corrupted inputs. A capacity sweep entry is also listed in "robustness" as corruption "capacity-bpr" or
"capacity-vanilla", level i = the i-th capacity from the largest down, severity = the capacity ratio, so that
reports draw the accuracy-against-capacity curve beside the corruption curves.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from smoe._files import atomic_write
from smoe._validate import check_choice, check_float, check_int
from smoe.data.corrupt import CORRUPTIONS, available_corruptions, parse_corruption, severity
from smoe.layer import moe_layers
from smoe.workbench.document import Table, render_markdown
from smoe.workbench.measure.routing_metrics import dropped_fraction
from smoe.workbench.run.runner import load_run
from smoe.workbench.tasks import Task, get_task
from smoe.workbench.train.run_folder import hold_folder

CORRUPTION_SEED = 0
BOOTSTRAP_RESAMPLES = 1000
BPR_CHOICES = ("both", "on", "off")
TASK_CONTEXT = frozenset({"vocab_size"})  # what the tasks' evaluations give a corruption besides the inputs


def default_sweep(corruptions: Sequence[str]) -> list[str]:
    """Every level (1..5) of each named corruption: the default robustness sweep of a task."""
    return [f"{name}:{level}" for name in corruptions for level in range(1, len(CORRUPTIONS[name].levels) + 1)]


def task_corruptions(task: Task) -> list[str]:
    """The corruptions a task's evaluation applies: those of the kinds of its default sweep (text, image) that need
    nothing beyond what it passes (`TASK_CONTEXT`)."""
    kinds = {CORRUPTIONS[name].kind for name in task.corruptions}
    return [name for name in available_corruptions() if CORRUPTIONS[name].kind in kinds
            and CORRUPTIONS[name].needs <= TASK_CONTEXT]


def check_corruptions(task: Task, specs: Sequence[str]) -> None:
    """ValueError naming the first spec that is not "NAME:LEVEL" of a corruption the task applies."""
    accepted = task_corruptions(task)
    for spec in specs:
        c, _ = parse_corruption(spec)
        if c.name not in accepted:
            raise ValueError(f"corruption {spec!r}: task {task.name} takes {', '.join(accepted)}")


def eval_file(eval_k: int | None) -> str:
    return "eval.json" if eval_k is None else f"eval-k{eval_k}.json"


def _routers_with(model: nn.Module, option: str, what: str) -> list[nn.Module]:
    routers = [layer.router for layer in moe_layers(model) if hasattr(layer.router.options, option)]
    if not routers:
        names = sorted({type(layer.router).__name__ for layer in moe_layers(model)})
        raise ValueError(f"{what} needs a router with a {option} option; this model's routers: {', '.join(names)}")
    return routers


@contextlib.contextmanager
def inference_settings(model: nn.Module, capacity: float | None = None, bpr: bool | None = None,
                       eval_k: int | None = None) -> Iterator[None]:
    """Within the block: every MoE layer's dispatcher capacity factor set to `capacity` (None: unchanged),
    batch priority on (V-MoE's BPR, `batch_priority="eval"`) or off ("never") for routers that have it, and
    `eval_k` experts per token in eval mode for routers that have it (topk; S2MoE's inner router)."""
    changes: list[tuple[object, str, object]] = []
    if capacity is not None:
        check_float("capacity", capacity, low=0.0, low_open=True)
        changes += [(layer.dispatcher, "capacity_factor", capacity) for layer in moe_layers(model)]
    if bpr is not None:
        changes += [(r.options, "batch_priority", "eval" if bpr else "never")
                    for r in _routers_with(model, "batch_priority", "--bpr")]
    if eval_k is not None:
        for r in _routers_with(model, "eval_k", "--eval-k"):
            check_int("eval_k", eval_k, low=1, high=r.num_experts)
            changes.append((r.options, "eval_k", eval_k))
    previous = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
    try:
        for obj, name, value in changes:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in previous:
            setattr(obj, name, value)


class _DropCounter:
    """Forward hooks that pool each MoE layer's MoEStats over the calls of an evaluation."""
    def __init__(self, model: nn.Module):
        self.stats = []
        self.handles = [layer.register_forward_hook(self._save) for layer in moe_layers(model)]

    def _save(self, module, args, output) -> None:
        self.stats.append(output.stats)

    def close(self) -> float:
        for h in self.handles:
            h.remove()
        return dropped_fraction(self.stats) if self.stats else 0.0


@torch.no_grad()
def evaluate_model(model: nn.Module, evaluate, metric_key: str, higher_is_better: bool, split: str = "test",
                   corruptions: Sequence[str] = (), capacities: Sequence[float] = (), bpr: str = "both",
                   eval_k: int | None = None, scores=None) -> dict:
    """The eval.json content (module docstring) for `model` and the task's `evaluate` and `scores` functions
    (`TaskSetup`; scores None: no clean_bootstrap)."""
    check_choice("bpr", bpr, BPR_CHOICES)
    specs = [parse_corruption(spec) for spec in corruptions]  # fail on a bad spec before evaluating anything
    device = next(model.parameters()).device

    def generator() -> torch.Generator:  # a fresh one per evaluation: results never depend on their order
        return torch.Generator(device).manual_seed(0)

    model.eval()
    with inference_settings(model, eval_k=eval_k):
        started = time.perf_counter()
        clean = evaluate(model, split, generator())
        elapsed = time.perf_counter() - started
        bootstrap = None
        if scores is not None:
            samples = scores(model, split, generator())
            bootstrap = {"sd": samples.bootstrap_sd(BOOTSTRAP_RESAMPLES), "samples": int(samples.totals.size),
                         "resamples": BOOTSTRAP_RESAMPLES}
        robustness = []
        by_name: dict[str, list[tuple[int, str]]] = {}
        for (c, level), spec in zip(specs, corruptions):
            by_name.setdefault(c.name, []).append((level, spec))
        for name, levels in by_name.items():
            robustness.append({"corruption": name, "level": 0, "severity": 0.0, "metric": clean[metric_key],
                               "metrics": clean})
            for level, spec in levels:
                if level == 0:
                    continue
                metrics = evaluate(model, split, generator(), corruption=spec, seed=CORRUPTION_SEED)
                robustness.append({"corruption": name, "level": level, "severity": severity(spec),
                                   "metric": metrics[metric_key], "metrics": metrics})
        capacity = []
        for use_bpr in _capacity_modes(model, bpr) if capacities else []:
            name = "capacity-bpr" if use_bpr else "capacity-vanilla"
            robustness.append({"corruption": name, "level": 0, "severity": 0.0, "metric": clean[metric_key],
                               "metrics": clean})
            for level, c in enumerate(sorted(set(capacities), reverse=True), start=1):
                counter = _DropCounter(model)
                try:
                    with inference_settings(model, capacity=c, bpr=use_bpr if _has_bpr(model) else None):
                        metrics = evaluate(model, split, generator())
                finally:
                    dropped = counter.close()
                capacity.append({"capacity": c, "bpr": use_bpr, "metric": metrics[metric_key],
                                 "dropped_fraction": dropped})
                robustness.append({"corruption": name, "level": level, "severity": c, "metric": metrics[metric_key],
                                   "metrics": metrics})
    return {"split": split, "metric": {"name": metric_key, "higher_is_better": higher_is_better}, "eval_k": eval_k,
            "clean": clean, "eval_time_s": elapsed, "clean_bootstrap": bootstrap, "robustness": robustness,
            "capacity": capacity}


def _has_bpr(model: nn.Module) -> bool:
    return any(hasattr(layer.router.options, "batch_priority") for layer in moe_layers(model))


def _capacity_modes(model: nn.Module, bpr: str) -> list[bool]:
    """Which dropping orders a capacity sweep evaluates: BPR (True) and/or positional (False). "both" is
    positional only for models without a BPR router."""
    if bpr == "both":
        return [True, False] if _has_bpr(model) else [False]
    if bpr == "on" and not _has_bpr(model):
        raise ValueError("bpr='on' needs a router with Batch Prioritized Routing (a batch_priority option: vmoe)")
    return [bpr == "on"]


def evaluate_run(run_dir: str | Path, device: str | None = None, **options) -> dict:
    """Load the run in `run_dir`, `evaluate_model` it with `options` (default corruptions: the task's sweep) and
    write RUN_DIR/eval.json (eval-k<K>.json with eval_k), holding the run folder's writer lock."""

    with hold_folder(run_dir, create=False):
        run, setup, step = load_run(run_dir, device)
        task = get_task(run.task)
        if options.get("corruptions") is None:
            options["corruptions"] = default_sweep(task.corruptions)
        check_corruptions(task, options["corruptions"])
        result = {"step": step, **evaluate_model(setup.model, setup.evaluate, task.metric_key, task.higher_is_better,
                                                 scores=setup.scores, **options)}
        atomic_write(Path(run_dir, eval_file(options.get("eval_k"))), json.dumps(result, indent=1).encode())
    return result


def format_eval(result: dict) -> str:
    """The eval result as a table: one row per (corruption or capacity mode, level)."""
    name = result["metric"]["name"]
    rows = [[e["corruption"], str(e["level"]), f"{e['severity']:g}", f"{e['metric']:.4g}"]
            for e in result["robustness"]]
    bootstrap = result.get("clean_bootstrap")
    head = f"{result['split']} {name}: clean {result['clean'][name]:.4g}" + (
        f" (bootstrap sd {bootstrap['sd']:.2g} over {bootstrap['samples']} samples)" if bootstrap else "") + (
        f" (eval_k={result['eval_k']})" if result["eval_k"] is not None else "")
    if not rows:
        return head
    return head + "\n\n" + render_markdown([Table(["corruption", "level", "severity", name], rows)])
