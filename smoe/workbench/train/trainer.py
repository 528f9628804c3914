"""One Trainer for every smoe model. It knows no task: a task hands it a model, a batch sampler, a loss and an
evaluation (`workbench.tasks`).

Per optimizer step: `grad_accum` micro-batches, each `loss = task loss + sum of the routers' aux losses over
layers` (logged by name), AdamW, warm-up + cosine learning rate, gradient clipping; then, once per step,
`layer.after_step(stats)` for each layer of `moe_layers(model)` with that layer's `MoEStats` of every
micro-batch of the step, then the hooks (per-step analytics). Eval every `eval_every` steps, metrics to JSONL
and TensorBoard, atomic checkpoints, exact resume, SIGINT/SIGTERM -> checkpoint and stop. The last step is
checkpointed before the final evaluation, and a checkpoint records how many metrics.jsonl records precede it, so a
run killed at any point resumes to the files of a run never killed (no record twice). A checkpoint whose step
disagrees with its optimizer's step count (a forged or misnamed file) is refused.

With `data_parallel=True` (W processes, torchrun) the same loop runs on every rank: `data_parallel.DataParallel`
gives each rank its share of every batch, synchronises the gradients, clips with the whole model's norm, hands the
layers the group's routing counts, averages the logged values, shards the checkpoints and agrees on when
to stop; rank 0 alone writes the run folder's files. One process uses `SingleProcess`, which does none of that.

Randomness: the caller initialises the model (`workbench.run.runner.task_setup`: keyed by seed and parameter name);
dropout draws from the global generator, which the Trainer seeds from `seed` (so dropout does not depend on how
many draws the model's construction took); data order and model noise (router noise, VAE sampling) come from two
generators seeded from `seed` (with data_parallel, rank r > 0 seeds its dropout and noise from (seed, r)). All
three states are in the checkpoint, so `steps=2n` straight and `steps=n` then `steps=2n` resumed give
bit-identical parameters on CPU (the batch sampler must keep no state besides its generator, as the
samplers of `smoe.data.batches` do).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from smoe._files import atomic_write
from smoe._validate import check_int
from smoe.data.batches import map_tensors
from smoe.layer import MoEOutput, moe_layers
from smoe.models.common import aux_losses
from smoe.workbench.train.averaging import WeightAverage, mean_of
from smoe.workbench.train.checkpoint import (
    CheckpointError,
    checkpoint_path,
    checkpoint_steps,
    decode_bytes,
    encode_bytes,
    load_module_tensors,
    load_optimizer_tensors,
    module_tensors,
    optimizer_steps,
    optimizer_tensors,
    reading_state,
)
from smoe.workbench.train.config import TrainConfig, with_train_defaults
from smoe.workbench.train.data_parallel import DataParallel, SingleProcess
from smoe.workbench.train.run_folder import NoLog, RunLog, hold_folder, read_json, read_yaml, remove_temp_files
from smoe.workbench.train.signals import StopSignals

_DATA_STREAM, _NOISE_STREAM, _EVAL_STREAM, _DROPOUT_STREAM = 1, 2, 3, 4
# paths of the run config a resume may change: the steps (extending a run), the provenance (which code ran)
MAY_CHANGE_ON_RESUME = frozenset({("train", "steps"), ("provenance",)})


def derived_seed(seed: int, stream: int) -> int:
    """A seed for one random stream of a run (data order, model noise, eval, init)."""
    return (seed * 1_000_003 + stream) % (2**63)


@dataclass
class StepOutput:
    """What a task's loss function returns for one micro-batch.

    loss: 0-dim task loss (the Trainer adds the routers' aux losses); moe: the model's per-layer MoEOutputs;
    metrics: extra 0-dim tensors to log (accuracy, loss terms); count: tokens or samples, for throughput.
    """

    loss: Tensor
    moe: list[MoEOutput]
    metrics: dict[str, Tensor] = field(default_factory=dict)
    count: int = 0


LossFn = Callable[[nn.Module, object, int, torch.Generator], StepOutput]
EvalFn = Callable[[nn.Module, str, torch.Generator], dict[str, float]]
Hook = Callable[[int, list[StepOutput]], "dict[str, float] | None"]


@dataclass
class TrainResult:
    status: str  # "done" or "interrupted"
    step: int
    final: dict = field(default_factory=dict)  # {"valid": {...}, "test": {...}} when done
    signal: int | None = None  # the signal that interrupted the run


class Trainer:
    """Train `model` on the batches of `train_batches(generator)` with `loss_fn`; evaluate with `evaluate`.

    model: its MoE layers (`smoe.layer.moe_layers`) meet `MoELayer`; their outputs come in that order.
    train_batches(generator) -> an endless iterator of batches whose only state is `generator`.
    loss_fn(model, batch, step, generator) -> StepOutput; evaluate(model, split, generator) -> {metric: float}.
    out_dir: the run folder (config.yaml, metrics.jsonl, tb/, checkpoints/, final.json); run_config: the whole
    run's configuration (saved as YAML, compared on resume except train.steps). data_parallel: train on every
    rank of the initialised default process group (see `workbench.train.data_parallel`); model already prepared for it.
    tb_dir: where the TensorBoard events go instead of out_dir/tb (TensorBoard names a run by its folder).
    read_config: maps a run configuration read back from the folder or a checkpoint (one written by an older
    smoe) to today's spelling before it is compared with run_config (default: as it is).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, *, loss_fn: LossFn,
                 train_batches: Callable[[torch.Generator], Iterator], evaluate: EvalFn | None = None,
                 out_dir: str | Path, run_config: dict | None = None, seed: int = 0, device: str = "cpu",
                 hooks: list[Hook] | None = None, progress: bool = True, data_parallel: bool = False,
                 tb_dir: str | Path | None = None, read_config: Callable[[dict], dict] | None = None):
        self.model, self.config = model.to(device), config
        # the training forward; evaluation, hooks (forward hooks added later would not be seen by a compiled
        # model) and checkpoints use the module itself
        self.step_model = torch.compile(self.model) if config.compile else self.model
        self.loss_fn, self.train_batches, self.evaluate = loss_fn, train_batches, evaluate
        self.out_dir, self.seed, self.device = Path(out_dir), seed, torch.device(device)
        # JSON round trip: the config is compared with the one read back from a checkpoint
        self.run_config = json.loads(json.dumps(run_config if run_config is not None else {"train": asdict(config)}))
        self.read_config = read_config or (lambda config: config)
        self.hooks, self.progress = list(hooks or []), progress
        self.tb_dir = None if tb_dir is None else Path(tb_dir)
        self.optimizer = self._build_optimizer()
        self.parallel = DataParallel(self.model, self.optimizer) if data_parallel else SingleProcess()
        self.data_rng = torch.Generator().manual_seed(derived_seed(seed, _DATA_STREAM))  # the same on every rank
        noise_seed, dropout_seed = derived_seed(seed, _NOISE_STREAM), derived_seed(seed, _DROPOUT_STREAM)
        if self.parallel.rank:  # the shares of a batch get their own router noise and dropout (rank 0: one process's)
            noise_seed = derived_seed(noise_seed, self.parallel.rank)
            dropout_seed = derived_seed(dropout_seed, self.parallel.rank)
        torch.manual_seed(dropout_seed)  # not where the model's construction left it: the same for every router
        self.noise = torch.Generator(self.device).manual_seed(noise_seed)
        self.average = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        self.tail: list[dict] = []  # the evaluations the final metric is the mean of, so far: {"step", read: ...}
        self.step = 0
        self.log: RunLog | NoLog = NoLog()  # while training
        self.saved_step: int | None = None  # the step of the latest checkpoint written or restored
        self.saved_records: int | None = None  # the number of metrics.jsonl records it recorded (None: unknown)

    # ------------------------------------------------------------ set-up

    def _build_optimizer(self) -> torch.optim.AdamW:
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(self.config.beta1, self.config.beta2))

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def _prepare_dir(self, resume: bool) -> dict | None:
        """Check the run folder (held by this process) and write its config.yaml; returns final.json's record
        when a resumed run is already done at `steps` (then nothing is written).

        A fresh run needs a folder without a checkpoint or final.json (a config.yaml alone is what a run killed
        before its first checkpoint leaves: it is started over). Resume continues the latest checkpoint of the same
        configuration, and is refused past `steps`; without a checkpoint it starts from step 0 (after checking
        the folder's config.yaml, if any). Logs past the starting step and temporary files are removed.
        """
        final = read_json(self.out_dir / "final.json")
        if resume and checkpoint_steps(self.checkpoint_dir):
            self._restore()
            if self.step > self.config.steps:
                raise ValueError(f"{self.out_dir} holds a run at step {self.step}, past steps={self.config.steps}; "
                                 f"nothing to do (pass --steps {self.step} or more to extend it)")
            if final is not None and final.get("step") == self.step == self.config.steps:
                return final
        elif resume:
            if final is not None:
                raise CheckpointError(f"{self.out_dir} holds a finished run without checkpoints; it cannot be "
                                      "resumed (choose another --out)")
            self._check_folder_config()
            warnings.warn(f"no checkpoint in {self.checkpoint_dir}: starting from step 0", stacklevel=3)
        elif checkpoint_steps(self.checkpoint_dir) or final is not None:
            raise ValueError(f"{self.out_dir} already holds a run; resume it (--resume) or choose another --out")
        self.parallel.barrier()  # every rank has looked before rank 0 writes
        if self.parallel.is_main:
            remove_temp_files(self.out_dir)
            if final is not None:  # extended past its end: final.json will describe the new one
                (self.out_dir / "final.json").unlink()
            atomic_write(self.out_dir / "config.yaml", yaml.safe_dump(self.run_config, sort_keys=False).encode())
        return None

    def _check_folder_config(self) -> None:
        """A config.yaml already in the folder must be this run's (train.steps may differ)."""
        path = self.out_dir / "config.yaml"
        if not path.exists():
            return
        mismatch = config_differences(with_train_defaults(self.read_config(read_yaml(path))), self.run_config,
                                      ignore=MAY_CHANGE_ON_RESUME)
        if mismatch:
            raise CheckpointError(f"{path} was written with another configuration (only train.steps may change on "
                                  f"resume): " + "; ".join(mismatch))

    # ------------------------------------------------------------ checkpoints

    def save(self, log_records: int | None = None) -> Path:
        """Checkpoint this step; log_records: the metrics.jsonl records a resume keeps (default: all so far)."""
        model_t, aliases = module_tensors(self.model)
        optim_t, optim_meta = optimizer_tensors(self.optimizer)
        tensors = {**{f"model.{k}": v for k, v in model_t.items()}, **{f"optim.{k}": v for k, v in optim_t.items()}}
        if self.average is not None:
            tensors.update({f"ema.{k}": v for k, v in self.average.state().items()})
        state = {
            "config": self.run_config, "aliases": aliases, "optimizer": optim_meta,
            "log_records": self.log.count if log_records is None else log_records,
            **({"tail": self.tail} if self.config.tail_evals > 1 else {}),
            "rng": {"global": encode_bytes(torch.get_rng_state()), "data": encode_bytes(self.data_rng.get_state()),
                    "noise": encode_bytes(self.noise.get_state()),
                    **({"cuda": encode_bytes(torch.cuda.get_rng_state(self.device))}
                       if self.device.type == "cuda" else {})},
        }
        path = self.parallel.save_checkpoint(self.checkpoint_dir, self.step, tensors, state,
                                             self.config.keep_checkpoints)
        self.saved_step = self.step
        return path

    def _restore(self) -> None:
        tensors, state = self.parallel.load_checkpoint(self.checkpoint_dir)
        path = checkpoint_path(self.checkpoint_dir, state["step"])
        with reading_state(path):
            mismatch = config_differences(with_train_defaults(self.read_config(state["config"])), self.run_config,
                                          ignore=MAY_CHANGE_ON_RESUME)
            if mismatch:
                raise CheckpointError(f"the checkpoint in {self.checkpoint_dir} was written with another "
                                      f"configuration (only train.steps may change on resume): " + "; ".join(mismatch))
            load_module_tensors(self.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                                state["aliases"])
            load_optimizer_tensors(self.optimizer, {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")},
                                   state["optimizer"])
            taken = optimizer_steps(self.optimizer)  # one optimizer step per training step: a witness of the step
            if taken is not None and taken != state["step"]:
                raise CheckpointError(f"checkpoint state {path} says step {state['step']}, but its optimizer state "
                                      f"took {taken} steps: the file was edited or belongs to another step")
            if self.average is not None:
                self.average.load({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, state["step"])
            if self.config.tail_evals > 1:
                self.tail = list(state["tail"])
            rng = state["rng"]
            torch.set_rng_state(decode_bytes(rng["global"]))
            self.data_rng.set_state(decode_bytes(rng["data"]))
            self.noise.set_state(decode_bytes(rng["noise"]))
            if "cuda" in rng:
                torch.cuda.set_rng_state(decode_bytes(rng["cuda"]), self.device)
            records = state.get("log_records")  # absent from checkpoints written before it was recorded
            if records is not None:
                check_int("log_records", records, low=0)
        self.step = self.saved_step = state["step"]
        self.saved_records = records

    # ------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> TrainResult:
        """Train until `config.steps` (continuing from the latest checkpoint with resume=True), holding the run
        folder's writer lock throughout (`workbench.train.run_folder.hold_folder`; rank 0 under data parallelism)."""
        with hold_folder(self.out_dir) if self.parallel.is_main else contextlib.nullcontext():
            done = self._prepare_dir(resume)
            if done is not None:
                return TrainResult("done", self.step, {k: v for k, v in done.items() if k != "step"})
            return self._train()

    def _train(self) -> TrainResult:
        batches = iter(self.train_batches(self.data_rng))
        self.log = log = RunLog(self.out_dir, self.step, self.saved_records, self.tb_dir) if self.parallel.is_main \
            else NoLog()
        with StopSignals() as stops:  # first SIGINT/SIGTERM: finish the step, checkpoint, stop
            bar = tqdm(total=self.config.steps, initial=self.step, unit="step",
                       disable=not (self.progress and self.parallel.is_main))
            try:
                stop = None
                while self.step < self.config.steps and stop is None:
                    started = time.perf_counter()
                    outputs, record = self.train_step(batches)
                    self.step += 1
                    for hook in self.hooks:
                        record.update(hook(self.step, outputs) or {})
                    stop = self.parallel.agree_stop(stops.signum)  # every rank stops after the same step
                    if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                        values, count = self.parallel.reduce_log(record, sum(o.count for o in outputs))
                        values["per_s"] = count / max(time.perf_counter() - started, 1e-9)
                        log.write(self.step, "train", values)
                        bar.set_postfix(loss=f"{values['loss']:.4g}")
                    bar.update(1)
                    if self._due(self.config.eval_every) and self.step < self.config.steps:
                        bar.set_description("evaluating")
                        self._periodic_evaluation(log)
                        bar.set_description("")
                    if self._due(self.config.checkpoint_every) or stop is not None:
                        self.save()
                if self.step < self.config.steps:
                    return TrainResult("interrupted", self.step, signal=stop)
                if self.saved_step != self.step:  # before the final evaluation: killed from here on, a run resumes
                    self.save()                   # at this step with the log as it is now, and evaluates again
                bar.set_description("final evaluation")
                logged = self.log.count  # the final records are not in the checkpoint: a resume evaluates again
                final = self._final_evaluation(log)
                if self.config.tail_evals > 1:  # the final evaluation joins the tail a longer run reads
                    self.save(log_records=logged)
                if self.parallel.is_main:
                    final_json = json.dumps({"step": self.step, **final}, indent=1).encode()
                    atomic_write(self.out_dir / "final.json", final_json)
                return TrainResult("done", self.step, final)
            finally:
                bar.close()
                log.close()
                self.log = NoLog()

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def train_step(self, batches: Iterator) -> tuple[list[StepOutput], dict[str, Tensor]]:
        """One optimizer step over grad_accum micro-batches; returns their outputs and the step's log record."""
        cfg, model = self.config, self.model
        model.train()
        lr = cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        outputs: list[StepOutput] = []
        sums: dict[str, Tensor] = {}
        for _ in range(cfg.grad_accum):
            batch = _to_device(self.parallel.share(next(batches)), self.device)
            out = self.loss_fn(self.step_model, batch, self.step, self.noise)
            aux = aux_losses(out.moe)
            total = out.loss + sum(aux.values(), torch.zeros((), device=self.device))
            (total / cfg.grad_accum).backward()
            outputs.append(out)
            terms = {"loss": out.loss, "total": total, **{f"aux/{k}": v for k, v in aux.items()}, **out.metrics}
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach() / cfg.grad_accum
        self.parallel.sync_gradients()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if cfg.grad_clip > 0:
            sums["grad_norm"] = self.parallel.clip_grad_norm_(params, cfg.grad_clip)
        self.optimizer.step()
        for i, layer in enumerate(moe_layers(model)):
            layer.after_step(self.parallel.layer_stats(layer, [out.moe[i].stats for out in outputs]))
        if self.average is not None:
            self.average.update(model)
        sums["lr"] = torch.tensor(lr, dtype=torch.float64)
        return outputs, sums

    @torch.no_grad()
    def _evaluate(self, split: str) -> dict[str, float]:
        """Evaluate in eval mode with a fresh generator (never the training streams)."""
        if self.evaluate is None:
            return {}
        self.model.eval()
        generator = torch.Generator(self.device).manual_seed(derived_seed(self.seed, _EVAL_STREAM))
        try:
            return self.evaluate(self.model, split, generator)
        finally:
            self.model.train()

    def _reads(self, splits: tuple[str, ...]) -> dict[str, dict[str, dict[str, float]]]:
        """{"last": {split: metrics}} and, with an average of the weights, {"ema": ...} of its evaluation."""
        reads = {"last": {split: self._evaluate(split) for split in splits}}
        if self.average is not None:
            with self.average.swapped_in(self.model):
                reads["ema"] = {split: self._evaluate(split) for split in splits}
        return reads

    def _log_reads(self, log, reads: dict) -> None:
        """The last weights' metrics as split "valid" / "test", the average's as "valid_ema" / "test_ema"."""
        for weights, by_split in reads.items():
            for split, values in by_split.items():
                log.write(self.step, split if weights == "last" else f"{split}_{weights}", values)

    def _periodic_evaluation(self, log) -> None:
        """The valid split; on test too where the evaluation is one of the final metric's tail."""
        in_tail = self.step in self.config.tail_steps()
        reads = self._reads(("valid", "test") if in_tail else ("valid",))
        self._log_reads(log, reads)
        if in_tail:
            self.tail = [t for t in self.tail if t["step"] < self.step] + [{"step": self.step, **reads}]

    def _final_evaluation(self, log) -> dict:
        """final.json's fields: "valid" and "test" of the chosen read (`TrainConfig.eval_weights`, mean over
        `tail_evals`); with an average or a tail also "read" (its name), "reads" (every read: last, ema and their
        *_tail_mean) and "tail_steps" (the evaluations averaged)."""
        if self.evaluate is None:
            return {}
        cfg = self.config
        reads = self._reads(("valid", "test"))
        self._log_reads(log, reads)
        if cfg.ema_decay == 0 and cfg.tail_evals == 1:
            return reads["last"]
        tail = [t for t in self.tail if t["step"] in cfg.tail_steps() and t["step"] < self.step]
        tail.append({"step": self.step, **reads})
        self.tail = tail  # checkpointed: a run extended past this step finds this evaluation if it is in its tail
        every = dict(reads)
        if cfg.tail_evals > 1:
            for weights in reads:
                every[f"{weights}_tail_mean"] = {split: mean_of([t[weights][split] for t in tail])
                                                 for split in ("valid", "test")}
        name = cfg.eval_weights + ("_tail_mean" if cfg.tail_evals > 1 else "")
        return {**every[name], "read": name, "reads": every, "tail_steps": [t["step"] for t in tail]}


def _to_device(batch, device: torch.device):
    return map_tensors(lambda t: t.to(device), batch)


def config_differences(old: dict, new: dict, ignore: set[tuple[str, ...]] = frozenset(), prefix=()) -> list[str]:
    """'key: old -> new' for every leaf that differs between two nested dicts (paths in `ignore` skipped)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        path = (*prefix, key)
        if path in ignore:
            continue
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, ignore, path)
        elif a != b:
            out.append(f"{'.'.join(map(str, path))}: {a!r} -> {b!r}")
    return out
