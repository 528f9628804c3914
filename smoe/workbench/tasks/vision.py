"""Patch classification with V-MoE: scikit-learn 8x8 digits and MNIST-1D signals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smoe._validate import check_int
from smoe.data.batches import tensor_batches
from smoe.data.corrupt import corrupt_signals
from smoe.data.vision import load_digits, load_mnist1d, patchify
from smoe.models import ViT, ViTConfig
from smoe.workbench.tasks.base import (
    Task,
    TaskSetup,
    classifier_probe,
    classify_eval,
    classify_scores,
    classify_step,
    moe_section,
    register_task,
)
from smoe.workbench.train.trainer import StepOutput


@dataclass
class VisionDataConfig:
    """Images (digits) or signals (mnist1d) cut into patch_size patches; num_samples: MNIST-1D's size;
    probe_tokens: routed tokens (patches + [CLS]) of the routing analytics' probe set (valid images; 0 = off)."""

    patch_size: int = 2
    num_samples: int = 5000
    eval_batch_size: int = 256
    split_seed: int = 0
    probe_tokens: int = 2048

    def __post_init__(self):
        check_int("patch_size", self.patch_size, low=1)
        check_int("num_samples", self.num_samples, low=10)
        check_int("eval_batch_size", self.eval_batch_size, low=1)
        check_int("split_seed", self.split_seed, low=0)
        check_int("probe_tokens", self.probe_tokens, low=0)


def build_patch_classifier(run, raw: dict) -> TaskSetup:
    """raw: {split: (images or signals (n, ...), labels (n,))}."""
    data: VisionDataConfig = run.data
    x_train = raw["train"][0]
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)  # one scalar each

    def prepare(x: Tensor) -> Tensor:
        return patchify((x - mean) / std, data.patch_size)

    splits = {s: (prepare(x), y) for s, (x, y) in raw.items()}
    _, num_patches, patch_dim = splits["train"][0].shape
    num_classes = int(max(int(y.max()) for _, y in splits.values() if y.numel())) + 1
    config = run.model_config(patch_dim=patch_dim, num_patches=num_patches, num_classes=num_classes)
    model = ViT(config)

    def logits_of(model, patches, **kw):
        return model(patches, **kw)

    def train_batches(generator: torch.Generator) -> Iterator:
        return tensor_batches(*splits["train"], batch_size=run.train.batch_size, generator=generator)

    def loss(model: nn.Module, batch, step: int, generator: torch.Generator) -> StepOutput:
        patches, labels = batch
        return classify_step(logits_of, (patches,), labels, model, step, generator)

    def corrupt_inputs(split: str, corruption: str, seed: int) -> tuple[Tensor]:
        """The split's raw images (signals) corrupted on their value range, then patched."""
        return (prepare(corrupt_signals(raw[split][0], corruption, seed)),)

    evaluate = classify_eval(logits_of, splits, data.eval_batch_size, corrupt_inputs)
    return TaskSetup(model, config, train_batches, loss, evaluate,
                     classifier_probe(logits_of, splits["valid"], num_patches + 1, data.probe_tokens,
                                       data.eval_batch_size, "digit", display=raw["valid"][0], prefix_tokens=1,
                                       label_names={"digit": [str(c) for c in range(num_classes)]}),
                     classify_scores(logits_of, splits, data.eval_batch_size))


_VIT_TINY = {
    "model": {"d_model": 64, "num_layers": 4, "num_heads": 4, "ffn_hidden": 128, "moe": moe_section(4, k=2)},
    "train": {"steps": 300, "schedule_steps": 300, "batch_size": 64, "lr": 3e-3, "warmup_steps": 30,
              "weight_decay": 0.05, "eval_every": 30, "checkpoint_every": 150},
}
_VIT_MEDIUM = {  # the scale study's (benchmarks/resolve_scale.py)
    "model": {"d_model": 128, "num_layers": 4, "num_heads": 4, "ffn_hidden": 256, "moe": moe_section(8, k=2)},
    "train": {"steps": 1000, "schedule_steps": 1000, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100,
              "weight_decay": 0.05, "eval_every": 250, "checkpoint_every": 250},
}
_VIT_DECISIVE = {  # the noise study's choice (docs/results.md, "Noise study"): tiny, read from the weight average
    **_VIT_TINY, "train": {**_VIT_TINY["train"], "ema_decay": 0.98, "eval_weights": "ema"},
}
_VIT_SMALL = {
    "model": {"d_model": 128, "num_layers": 6, "num_heads": 4, "ffn_hidden": 256, "moe": moe_section(8, k=2),
              "dropout": 0.1},
    "train": {"steps": 3000, "schedule_steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
              "weight_decay": 0.05, "eval_every": 250, "checkpoint_every": 1000},
}

_VIT_TASK = {"metric": "accuracy (valid/test)", "data_config": VisionDataConfig, "model_config": ViTConfig,
             "build": build_patch_classifier, "derived": {"patch_dim": 1, "num_patches": 1, "num_classes": 2},
             "metric_key": "accuracy", "higher_is_better": True, "trivial_key": "chance_accuracy"}


@register_task("digits")
def digits() -> Task:
    return Task(name="digits", summary="scikit-learn 8x8 digits, 2x2 patches, V-MoE",
                load_data=lambda data: load_digits(seed=data.split_seed),
                presets={"tiny": {**_VIT_TINY, "data": {"patch_size": 2}},
                         "medium": {**_VIT_MEDIUM, "data": {"patch_size": 2}},
                         "small": {**_VIT_SMALL, "data": {"patch_size": 2}},
                         "decisive": {**_VIT_DECISIVE, "data": {"patch_size": 2}}},
                corruptions=("noise", "blur", "occlude"), throughput_unit="images", **_VIT_TASK)


@register_task("mnist1d")
def mnist1d() -> Task:
    return Task(name="mnist1d", summary="MNIST-1D signals (the mnist1d generator), 1-D patches, V-MoE",
                load_data=lambda data: load_mnist1d(num_samples=data.num_samples, seed=data.split_seed),
                presets={"tiny": {**_VIT_TINY, "data": {"patch_size": 4, "num_samples": 4000}},
                         "small": {**_VIT_SMALL, "data": {"patch_size": 4, "num_samples": 10000}}},
                corruptions=("noise", "blur"), throughput_unit="signals", **_VIT_TASK)
