"""The SMoE-VAE on stroke sketches (generated, or QuickDraw files)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_int
from smoe.data.batches import tensor_batches
from smoe.data.corrupt import corrupt
from smoe.data.sketch import SKETCH_CLASSES, generate_sketches, load_quickdraw
from smoe.models import SMoEVAE, VAEConfig
from smoe.routing.topk import TopKOptions
from smoe.workbench.measure.probe import Probe, probe_batches, spread
from smoe.workbench.tasks.base import SampleScores, Task, TaskSetup, model_device, moe_section, register_task
from smoe.workbench.train.trainer import StepOutput


@dataclass
class SketchDataConfig:
    """Generated stroke sketches (smoe.data.sketch): num_per_class per class in all splits, `styles` hidden
    styles per class; or, with quickdraw set, real QuickDraw files, one per class (.npz sketch-rnn strokes or
    .npy bitmaps; quickdraw_limit: first train sketches kept per file, 0 = all). active_threshold: an expert is
    active when it gets at least this many eval images. probe_tokens: valid images of the routing analytics'
    probe set (0 = off)."""

    num_per_class: int = 1000
    styles: int = 3
    quickdraw: list[str] | None = None
    quickdraw_limit: int = 0
    active_threshold: int = 10
    eval_batch_size: int = 256
    split_seed: int = 0
    probe_tokens: int = 1000

    def __post_init__(self):
        check_int("num_per_class", self.num_per_class, low=10)
        check_int("styles", self.styles, low=1)
        check_int("quickdraw_limit", self.quickdraw_limit, low=0)
        if self.quickdraw is not None and (not isinstance(self.quickdraw, list) or not self.quickdraw):
            raise ValueError(f"quickdraw must be a non-empty list of file paths, got {self.quickdraw!r}")
        check_int("active_threshold", self.active_threshold, low=1)
        check_int("eval_batch_size", self.eval_batch_size, low=1)
        check_int("split_seed", self.split_seed, low=0)
        check_int("probe_tokens", self.probe_tokens, low=0)


def load_sketches(data: SketchDataConfig) -> dict:
    """{split: (images (n, 28, 28), classes (n,), hidden styles (n,), -1 when unknown)}."""
    if data.quickdraw:
        return load_quickdraw(data.quickdraw, limit=data.quickdraw_limit or None, seed=data.split_seed)
    return generate_sketches(data.num_per_class, styles=data.styles, seed=data.split_seed)


def build_sketch_vae(run, raw: dict) -> TaskSetup:
    data: SketchDataConfig = run.data
    splits = {s: (x, c) for s, (x, c, _style) in raw.items()}
    styles = raw["valid"][2]
    config = run.model_config(image_size=splits["train"][0].shape[-1])
    model = SMoEVAE(config)
    mean_image = splits["train"][0].mean(0)

    def train_batches(generator: torch.Generator) -> Iterator:
        return tensor_batches(*splits["train"], batch_size=run.train.batch_size, generator=generator)

    def loss(model: nn.Module, batch, step: int, generator: torch.Generator) -> StepOutput:
        x, labels = batch
        out = model(x, step=step, generator=generator)
        terms = model.loss(x, out, labels)
        metrics = {name: value.detach() / x.shape[0] for name, value in terms.items()}  # per image
        return StepOutput(loss=sum(terms.values()), moe=out.moe, metrics=metrics, count=x.shape[0])

    @torch.no_grad()
    def reconstruction(model: nn.Module, x_in: Tensor, x_target: Tensor, generator) -> tuple[Tensor, Tensor]:
        """(SSE of each reconstruction of x_in against x_target (n,) float64, (E,) images per expert)."""
        device, sse = model_device(model), [torch.zeros(0, dtype=torch.float64)]
        counts = torch.zeros(config.moe.num_experts, dtype=torch.long)
        for x, target in tensor_batches(x_in, x_target, batch_size=data.eval_batch_size, shuffle=False):
            out = model(x.to(device), generator=generator)
            sse.append(F.mse_loss(out.recon, target.to(device), reduction="none").flatten(1).double().sum(1).cpu())
            counts += out.moe[0].stats.counts.cpu()
        return torch.cat(sse), counts

    def evaluate(model: nn.Module, split: str, generator: torch.Generator, corruption: str | None = None,
                 seed: int = 0) -> dict[str, float]:
        """SSE per image; under a corruption, of the reconstructions of the corrupted images against the clean."""
        x_all, _ = splits[split]
        x_in = x_all if corruption is None else corrupt(x_all, corruption, seed)
        sse, counts = reconstruction(model, x_in, x_all, generator)
        n = max(x_all.shape[0], 1)
        baseline = float(F.mse_loss(mean_image.expand_as(x_all), x_all, reduction="sum")) / n
        return {"sse_per_image": float(sse.sum()) / n, "mean_image_sse": baseline,
                "active_experts": int((counts >= data.active_threshold).sum())}

    def scores(model: nn.Module, split: str, generator: torch.Generator) -> SampleScores:
        sse, _ = reconstruction(model, splits[split][0], splits[split][0], generator)
        return SampleScores(sse.numpy(), np.ones(sse.numel()))

    probe = None
    if data.probe_tokens:
        x_valid, c_valid = splits["valid"]
        pick = spread(x_valid.shape[0], data.probe_tokens)
        x_probe = x_valid[pick]
        labels = {"class": c_valid[pick]}
        if bool((styles[pick] >= 0).all()):  # generated sketches know their hidden style
            labels["style"] = styles[pick]
        probe = Probe(inputs=probe_batches(x_probe, batch_size=data.eval_batch_size), labels=labels,
                      metric=lambda model, generator: float(reconstruction(model, x_probe, x_probe, generator)[0]
                                                            .mean()),
                      latent=lambda model, generator: model.encoder(x_probe.to(model_device(model)))[0],
                      display=x_probe, label_names={"class": [Path(p).stem for p in data.quickdraw] if data.quickdraw
                                                         else list(SKETCH_CLASSES)})

    return TaskSetup(model, config, train_batches, loss, evaluate, probe, scores)


_VAE_TRAIN = {"batch_size": 128, "lr": 1e-3, "warmup_steps": 0, "min_lr_ratio": 1.0, "weight_decay": 0.0,
              "beta2": 0.999, "grad_clip": 0.0}


@register_task("sketch-vae")
def sketch_vae() -> Task:
    return Task(
        name="sketch-vae", summary="SMoE-VAE on generated stroke sketches, or QuickDraw files (data.quickdraw=[...])",
        metric="reconstruction SSE per image, hard top-1 routing (valid/test), against the mean image",
        data_config=SketchDataConfig, model_config=VAEConfig, load_data=load_sketches,
        presets={
            "tiny": {"data": {"num_per_class": 500},
                     "model": {"encoder_channels": [16, 32, 64],
                               "moe": moe_section(5, k=1)},
                     "train": {**_VAE_TRAIN, "steps": 300, "schedule_steps": 300, "eval_every": 30,
                               "checkpoint_every": 150}},
            "small": {"data": {"num_per_class": 4000},
                      "model": {"moe": moe_section(7, k=1)},
                      "train": {**_VAE_TRAIN, "steps": 3000, "schedule_steps": 3000, "eval_every": 500,
                                "checkpoint_every": 1000}},
        },
        router_options={"topk": TopKOptions(load_balance_coef=0.0)},
        build=build_sketch_vae, derived={"image_size": 28},
        metric_key="sse_per_image", higher_is_better=False, corruptions=("noise", "blur", "occlude"),
        throughput_unit="images", trivial_key="mean_image_sse",
    )
