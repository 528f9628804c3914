"""A run's training configuration (`TrainConfig`): steps and schedule, optimiser, evaluation and checkpoint cadence,
the weights and evaluations the final metric reads; and reading a saved config written before a field existed."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from smoe._validate import check_bool, check_choice, check_float, check_int
from smoe.workbench.train.averaging import tail_steps

MAX_RATE = 1e3  # the largest lr and weight_decay (far above any useful value)
SCHEDULES = ("cosine", "wsd")
EVAL_WEIGHTS = ("last", "ema")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. `steps` is where training stops; the learning-rate schedule runs over
    `schedule_steps` whatever `steps` is, so that a run can be extended exactly with resume: linear warm-up, then
    `schedule` "cosine" (cosine to min_lr_ratio * lr) or "wsd" (warmup-stable-decay: lr until the last
    decay_fraction of the steps after warm-up, then linear to min_lr_ratio * lr), then flat. 0 for eval_every /
    checkpoint_every: only at the end; grad_clip 0: off. compile: run the training steps' forward under
    torch.compile (evaluation, hooks and checkpoints use the uncompiled module: the same parameters, the same
    state dict keys). lr and weight_decay at most MAX_RATE, beta1 and beta2 in [0, 1) (AdamW's update stays
    finite).

    The final metric (final.json, and so a comparison's headline): ema_decay > 0 keeps an exponential moving
    average of the weights (`workbench.train.averaging`, checkpointed); eval_weights "last" or "ema" says which
    weights are evaluated (and what `load_run` loads); tail_evals > 1 makes it the mean of the last tail_evals
    evaluations (the final one and the periodic ones before it, each on valid and test). With the defaults
    (0, "last", 1) a run is what it was before these options existed."""

    steps: int = 1000
    schedule_steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    compile: bool = False
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    ema_decay: float = 0.0
    eval_weights: str = "last"
    tail_evals: int = 1

    def __post_init__(self):
        for name in ("steps", "schedule_steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            check_int(name, getattr(self, name), low=1)
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            check_int(name, getattr(self, name), low=0)
        # bounded so that AdamW's update (lr / (1 - beta1 ** step), 1 - lr * weight_decay) stays finite in float32
        check_float("lr", self.lr, low=0.0, low_open=True, high=MAX_RATE)
        check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        check_float("weight_decay", self.weight_decay, low=0.0, high=MAX_RATE)
        check_float("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        check_float("beta2", self.beta2, low=0.0, high=1.0, high_open=True)
        check_float("grad_clip", self.grad_clip, low=0.0)
        check_bool("compile", self.compile)
        for name in ("lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip"):
            setattr(self, name, float(getattr(self, name)))  # beta1: 0 from a YAML file is a float to AdamW
        check_choice("schedule", self.schedule, SCHEDULES)
        check_float("decay_fraction", self.decay_fraction, low=0.0, high=1.0, low_open=True)
        check_float("ema_decay", self.ema_decay, low=0.0, high=1.0, high_open=True)
        check_choice("eval_weights", self.eval_weights, EVAL_WEIGHTS)
        if self.eval_weights == "ema" and not self.ema_decay:
            raise ValueError("eval_weights='ema' needs an average of the weights: set ema_decay in (0, 1)")
        check_int("tail_evals", self.tail_evals, low=1)
        periodic = (self.steps - 1) // self.eval_every if self.eval_every else 0
        if self.tail_evals - 1 > periodic:
            raise ValueError(f"tail_evals={self.tail_evals} needs {self.tail_evals - 1} periodic evaluations before "
                             f"the final one; steps={self.steps} with eval_every={self.eval_every} has {periodic}")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based): linear warm-up, the schedule's decay, then min."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(self.schedule_steps - self.warmup_steps, 1)
        floor = self.min_lr_ratio * self.lr
        if self.schedule == "wsd":
            decay = max(self.decay_fraction * span, 1.0)
            progress = min(max((step - self.schedule_steps + decay) / decay, 0.0), 1.0)
            return floor + (self.lr - floor) * (1 - progress)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return floor + 0.5 * (self.lr - floor) * (1 + math.cos(math.pi * progress))

    def tail_steps(self) -> list[int]:
        """The steps whose evaluations the final metric is the mean of (the last: `steps`)."""
        return tail_steps(self.steps, self.eval_every, self.tail_evals)


def with_train_defaults(config: dict) -> dict:
    """A saved run config with the `TrainConfig` fields it lacks (written before they existed) at their defaults,
    which are what such a run did."""
    train = config.get("train")
    if not isinstance(train, dict):
        return config
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return {**config, "train": {**defaults, **train}}
