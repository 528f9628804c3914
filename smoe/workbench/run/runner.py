"""Train a run into its folder (`train_run`) and load a trained run back from it (`load_run`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from smoe.collectives import collective
from smoe.init import init_keyed
from smoe.plugins import provenance
from smoe.workbench.measure.probe import TRACE_FILE, RoutingTrace
from smoe.workbench.run.config import RunConfig, check_device, run_config_from_dict, upgrade_run_config
from smoe.workbench.tasks import TaskSetup, get_task
from smoe.workbench.train.averaging import load_averaged
from smoe.workbench.train.checkpoint import checkpoint_path, load_checkpoint, load_module_tensors, reading_state
from smoe.workbench.train.data_parallel import ParallelConfig, prepare_model, process_group, run_world_size
from smoe.workbench.train.run_folder import hold_folder, read_yaml
from smoe.workbench.train.trainer import Hook, StepOutput, Trainer, TrainResult, derived_seed

_INIT_STREAM = 0


def train_run(run: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
              hooks: list[Hook] | None = None, parallel: ParallelConfig | None = None,
              tb_dir: str | Path | None = None) -> TrainResult:
    """Build the task's model and data from `run` and train it in `out_dir` (continuing it with resume).

    On several processes (torchrun, or an initialised process group of size > 1) every rank calls this: the
    model is built with the same seed everywhere and prepared as `parallel` says (default ParallelConfig()),
    the global batch `train.batch_size` is split over the ranks, and the run config records the `parallel`
    section (see `smoe.workbench.train.data_parallel`). The task's probe set is routed at every eval and at the end
    (`workbench.measure.probe.RoutingTrace`, written to out_dir/routing_trace.jsonl, rank 0) before the other hooks run;
    every layer's per-expert load on the training batches is logged (`expert_load_log`). tb_dir: TensorBoard's
    folder (default out_dir/tb). The run folder is held (one writer, `smoe.workbench.train.run_folder`) from before the
    data is loaded.
    """
    if run_world_size() == 1:
        with hold_folder(out_dir):  # a second writer fails before the data is loaded
            return _train(run, out_dir, resume, progress, hooks, tb_dir=tb_dir)
    parallel = parallel or ParallelConfig()
    with process_group(run.device, parallel.timeout_s) as device:
        if run.train.batch_size % dist.get_world_size():
            raise ValueError(f"train.batch_size={run.train.batch_size} (the global batch) must be divisible by the "
                             f"world size {dist.get_world_size()}")
        with hold_folder(out_dir) if dist.get_rank() == 0 else contextlib.nullcontext():
            return _train(run, out_dir, resume, progress, hooks, parallel, device, tb_dir)


def task_setup(run: RunConfig) -> TaskSetup:
    """The task's set-up of `run`, its model initialised paired: every parameter drawn from a generator keyed by
    (the run's seed, the parameter's name) (`smoe.init.init_keyed`), so the entries of a comparison start from the
    same values of every parameter they share, whatever parameters their routers add."""
    torch.manual_seed(derived_seed(run.seed, _INIT_STREAM))
    setup = get_task(run.task).setup(run)
    init_keyed(setup.model, derived_seed(run.seed, _INIT_STREAM))
    return setup


def expert_load_log(step: int, outputs: list[StepOutput]) -> dict[str, Tensor]:
    """Trainer hook: each MoE layer's load on the step's batches (fraction of its kept pairs per expert), as
    `load/layer<i>/expert<e>` (metrics.jsonl and TensorBoard scalars at every logged step; tensors, no host sync)."""
    out = {}
    for i in range(len(outputs[0].moe) if outputs else 0):
        counts = sum(o.moe[i].stats.counts for o in outputs).float()
        load = counts / counts.sum().clamp_min(1)
        out.update({f"load/layer{i}/expert{e}": load[e] for e in range(load.shape[0])})
    return out


def _train(run: RunConfig, out_dir: str | Path, resume: bool, progress: bool, hooks: list[Hook] | None,
           parallel: ParallelConfig | None = None, device: str | None = None,
           tb_dir: str | Path | None = None) -> TrainResult:
    if parallel is None:
        setup = task_setup(run)
        run_config = {**run.to_dict(setup.model_config), "provenance": provenance(run.plugins)}
    else:
        world_size = dist.get_world_size()
        setup = _setup_rank_zero_first(run)
        run_config = {**run.to_dict(setup.model_config), "parallel": prepare_model(setup.model, parallel, world_size),
                      "provenance": provenance(run.plugins)}
    trace = [] if setup.probe is None else [
        RoutingTrace(setup.model, setup.probe, Path(out_dir) / TRACE_FILE, run.train.eval_every, run.train.steps)]
    trainer = Trainer(setup.model, run.train, loss_fn=setup.loss, train_batches=setup.train_batches,
                      evaluate=setup.evaluate, out_dir=out_dir, run_config=run_config, seed=run.seed,
                      device=device or run.device, hooks=[*trace, expert_load_log, *(hooks or [])],
                      progress=progress, data_parallel=parallel is not None, tb_dir=tb_dir,
                      read_config=upgrade_run_config)
    return trainer.fit(resume=resume)


def load_run(run_dir: str | Path, device: str | None = None,
             step: int | None = None) -> tuple[RunConfig, TaskSetup, int]:
    """(run config, task set-up, checkpoint step) of a run folder of `smoe train` or `smoe compare`.

    The set-up's model has the weights of checkpoint `step` (default: the latest; their moving average where the
    run's final metric reads it, `train.eval_weights="ema"`) and is in eval mode on `device` (default: the run's);
    data, loss and evaluation are the task's.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"run_dir must be a run folder of `smoe train` or `smoe compare` (with config.yaml), "
                         f"got {str(run_dir)!r}")
    run = run_config_from_dict(read_yaml(path), path)
    if device is not None:
        check_device(device)
        run.device = device
    setup = task_setup(run)
    tensors, state = load_checkpoint(run_dir / "checkpoints", step)
    with reading_state(checkpoint_path(run_dir / "checkpoints", state["step"])):
        load_module_tensors(setup.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                            state["aliases"])
        if run.train.eval_weights == "ema":
            load_averaged(setup.model, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")},
                          run.train.ema_decay, state["step"])
    setup.model.to(run.device).eval()
    return run, setup, state["step"]


def load_model(run_dir: str | Path, device: str | None = None, step: int | None = None) -> nn.Module:
    """The trained model of a run folder (`smoe train` or `smoe compare`), ready to use: the weights of checkpoint
    `step` (default: the latest), in eval mode, on `device` (default: the run's). `smoe.load_model` is this."""
    return load_run(run_dir, device, step)[1].model


def _setup_rank_zero_first(run: RunConfig):
    """The task's setup on every rank, rank 0 first, so the others read what it cached (the tokenizer)."""
    def barrier() -> None:
        collective("barrier around the task's set-up on rank 0", None, dist.barrier)

    if dist.get_rank() != 0:
        barrier()
    setup = task_setup(run)
    if dist.get_rank() == 0:
        barrier()
    return setup
