"""What a task is (`Task`, `TaskSetup`), the task registry, and the helpers classification tasks share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe.data.batches import tensor_batches
from smoe.registry import Registry
from smoe.routing.base import RouterOptions
from smoe.workbench.measure.probe import Probe, probe_batches, spread
from smoe.workbench.measure.stats import bootstrap_sd
from smoe.workbench.train.trainer import StepOutput


@dataclass(frozen=True)
class SampleScores:
    """A split's headline metric from per-sample parts: metric = link(sum(totals) / sum(counts)), link = exp when
    `exp` (perplexity from summed cross-entropy), else the identity. totals, counts: (m,) float64 arrays."""

    totals: np.ndarray
    counts: np.ndarray
    exp: bool = False

    def metric(self, pick: np.ndarray | None = None) -> float:
        """The metric over all samples, or over the samples `pick` (m',) indexes (with repeats)."""
        totals, counts = (self.totals, self.counts) if pick is None else (self.totals[pick], self.counts[pick])
        mean = float(totals.sum()) / max(float(counts.sum()), 1e-300)
        return math.exp(mean) if self.exp else mean

    def bootstrap_sd(self, n_boot: int = 1000, seed: int = 0) -> float:
        """Evaluation noise: the sd of the metric over n_boot resamples of the samples (`stats.bootstrap_sd`)."""
        return bootstrap_sd(np.arange(self.totals.size), lambda i: self.metric(i.astype(np.int64)), n_boot, seed)

    def paired_bootstrap_sd(self, other: SampleScores, n_boot: int = 1000, seed: int = 0) -> float:
        """Evaluation noise of the paired difference metric(self) - metric(other), both scored on the same samples:
        its sd over n_boot resamples shared by the two (what the samples add to a per-seed paired difference)."""
        if other.totals.shape != self.totals.shape:
            raise ValueError(f"other must score the same samples: {other.totals.size} samples, not {self.totals.size}")
        return bootstrap_sd(np.arange(self.totals.size),
                            lambda i: self.metric(i.astype(np.int64)) - other.metric(i.astype(np.int64)), n_boot, seed)


@dataclass
class TaskSetup:
    """What the Trainer needs: a model, a batch sampler, a loss and an evaluation (`Trainer`).

    evaluate(model, split, generator, corruption=None, seed=0): the task metrics on a split; corruption "NAME:LEVEL"
    (`smoe.data.corrupt`) corrupts the split's inputs first, with a generator seeded by `seed`.
    probe: the fixed held-out set of the routing analytics (`workbench.measure.probe`), None when data.probe_tokens
    is 0.
    scores(model, split, generator): the clean headline metric of the split as per-sample parts (`SampleScores`,
    for a bootstrap of its evaluation noise); None when the task has none.
    """

    model: nn.Module
    model_config: object
    train_batches: Callable[[torch.Generator], Iterator]
    loss: Callable[[nn.Module, object, int, torch.Generator], StepOutput]
    evaluate: Callable[..., dict[str, float]]
    probe: Probe | None = None
    scores: Callable[[nn.Module, str, torch.Generator], SampleScores] | None = None


@dataclass
class Task:
    """A registered task.

    data_config / model_config: the dataclasses of the `data` and `model` sections; presets: {name: {"data":
    {...}, "model": {...}, "train": {...}}}; router_options: {router: that router's Options} applied when that
    router is chosen (the model's `moe.router_options` start from them, then the preset's own);
    derived: model fields filled from the data (not settable), with placeholder values used to validate the model
    section before the data is loaded; load_data(data config) -> the task's raw data (a corpus, image splits);
    build(run, raw data) -> TaskSetup. metric_key: the headline metric among the keys
    `evaluate` returns, and its direction; corruptions: the default robustness sweep (`smoe eval`);
    throughput_unit: what `StepOutput.count` counts (the unit of the logged throughput: tokens, images, ...);
    trivial_key: the key among those `evaluate` returns holding the metric of the task's trivial model (the unigram
    model's perplexity, the majority class's accuracy, the mean image's SSE), None when there is none: a model near
    it has barely trained (the report warns).
    """

    name: str
    summary: str
    metric: str
    data_config: type
    model_config: type
    presets: dict[str, dict]
    load_data: Callable[[object], object]
    build: Callable[[object, object], TaskSetup]
    router_options: dict[str, RouterOptions] = field(default_factory=dict)
    derived: dict[str, object] = field(default_factory=dict)
    metric_key: str = "loss"
    higher_is_better: bool = False
    corruptions: tuple[str, ...] = ()
    throughput_unit: str = "tokens"
    trivial_key: str | None = None

    def setup(self, run) -> TaskSetup:
        """The model, batches, loss and evaluation of `run` (a RunConfig of this task)."""
        return self.build(run, self.load_data(run.data))


TASKS: Registry[Task] = Registry("task")


def moe_section(num_experts: int, k: int) -> dict:
    """A preset's MoE layer (the model section's `moe`, a `smoe.MoEConfig` mapping): E experts, k per token."""
    return {"num_experts": num_experts, "router_options": {"k": k}}


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator on a factory `() -> Task`: registers the task it returns under `name` (its `Task.name`)."""

    def add(factory: Callable[[], Task]) -> Callable[[], Task]:
        task = factory()
        if task.name != name:
            raise ValueError(f"task factory {factory.__name__} registered as {name!r} returns task {task.name!r}")
        TASKS.add(name, task)
        return factory

    return add


def available_tasks() -> list[str]:
    return TASKS.names()


def get_task(name: str) -> Task:
    return TASKS.get(name)


# ---------------------------------------------------------------- shared helpers


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def classify_step(logits_of: Callable, inputs: tuple, labels: Tensor, model, step, generator) -> StepOutput:
    """Cross-entropy of a classifier: `logits_of(model, *inputs, step=, generator=)` -> ModelOutput."""
    out = logits_of(model, *inputs, step=step, generator=generator)
    loss = F.cross_entropy(out.logits.float(), labels)
    accuracy = (out.logits.argmax(-1) == labels).float().mean()
    return StepOutput(loss=loss, moe=out.moe, metrics={"accuracy": accuracy}, count=labels.numel())


@torch.no_grad()
def classify_samples(logits_of: Callable, model: nn.Module, inputs: tuple, labels: Tensor, batch_size: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per sample (n,) on the CPU: the cross-entropy (float64) and whether the classifier was right (bool)."""
    device = model_device(model)
    losses, correct = [], []
    for chunk in tensor_batches(*inputs, labels, batch_size=batch_size, shuffle=False):
        *xs, y = (t.to(device) for t in chunk)
        logits = logits_of(model, *xs, generator=generator).logits.float()
        losses.append(F.cross_entropy(logits, y, reduction="none").double().cpu())
        correct.append((logits.argmax(-1) == y).cpu())
    if not losses:  # an empty split
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(correct)


def classify_metrics(logits_of: Callable, model: nn.Module, inputs: tuple, labels: Tensor, batch_size: int,
                     generator: torch.Generator) -> dict[str, float]:
    """{"loss", "accuracy", "chance_accuracy"} of a classifier over inputs (tensors with n rows) and labels (n,);
    chance_accuracy: the accuracy of always answering the most frequent label."""
    loss, correct = classify_samples(logits_of, model, inputs, labels, batch_size, generator)
    n = max(labels.shape[0], 1)
    majority = int(torch.unique(labels, return_counts=True)[1].max()) if labels.numel() else 0
    return {"loss": float(loss.sum()) / n, "accuracy": int(correct.sum()) / n, "chance_accuracy": majority / n}


def classify_eval(logits_of: Callable, splits: dict, batch_size: int, corrupt_inputs: Callable) -> Callable:
    """evaluate(model, split, generator, corruption=None, seed=0) -> {"loss", "accuracy", "chance_accuracy"} over the
    whole split.

    splits: {split: (*model inputs, labels)}; corrupt_inputs(split, corruption, seed) -> corrupted model inputs.
    """

    def evaluate(model: nn.Module, split: str, generator: torch.Generator, corruption: str | None = None,
                 seed: int = 0) -> dict[str, float]:
        *inputs, labels = splits[split]
        if corruption is not None:
            inputs = corrupt_inputs(split, corruption, seed)
        return classify_metrics(logits_of, model, tuple(inputs), labels, batch_size, generator)

    return evaluate


def classify_scores(logits_of: Callable, splits: dict, batch_size: int) -> Callable:
    """scores(model, split, generator) -> SampleScores of the accuracy (each sample: right 1 or wrong 0)."""

    def scores(model: nn.Module, split: str, generator: torch.Generator) -> SampleScores:
        *inputs, labels = splits[split]
        _, correct = classify_samples(logits_of, model, tuple(inputs), labels, batch_size, generator)
        return SampleScores(correct.double().numpy(), np.ones(correct.numel()))

    return scores


def classifier_probe(logits_of: Callable, valid: tuple, tokens_per_sample: int, probe_tokens: int,
                      batch_size: int, label_name: str, display: Tensor, **shown) -> Probe | None:
    """The probe of a classifier: valid samples spread over the split, each sample's label on all its tokens.

    display: (n, ...) the valid samples as pictures show them (`Probe.display`); shown: the other picture fields
    of `Probe` (prefix_tokens, tokenizer, label_names)."""
    if not probe_tokens:
        return None
    *inputs, labels = valid
    pick = spread(labels.shape[0], max(probe_tokens // tokens_per_sample, 1))
    inputs, labels = [t[pick] for t in inputs], labels[pick]
    return Probe(inputs=probe_batches(*inputs, batch_size=batch_size),
                 labels={label_name: labels.repeat_interleave(tokens_per_sample)},
                 metric=lambda model, generator: classify_metrics(logits_of, model, tuple(inputs), labels,
                                                                  batch_size, generator)["accuracy"],
                 display=display[pick], **shown)


