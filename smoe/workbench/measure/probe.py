"""The probe set: a fixed held-out set that every run of a task routes, at every eval during training and once
after it, so that routing analytics (fluctuation over training, specialization, collapse) compare routers and
seeds on the same tokens.

Legend: N routed tokens of the probe set (all calls, in the model's flattened order), E experts, M real tokens.

A task builds its `Probe` from its validation split (`workbench.tasks`): samples spread evenly over the split, up to
`data.probe_tokens` routed tokens, with a label per token (BBC topic, digit, sketch class and hidden style).
`RoutingTrace` is the Trainer hook that routes it at every eval and appends a snapshot (per layer: each real
token's top-1 expert and assigned experts, load and probability summaries, fluctuation since the previous
snapshot) to `RUN_DIR/routing_trace.jsonl`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from smoe._files import atomic_write
from smoe._validate import check_int
from smoe.layer import MoEStats
from smoe.routing.base import Routing
from smoe.workbench.measure.instrumentation import record_routing
from smoe.workbench.measure.routing_metrics import (
    Fluctuation,
    assignment_fluctuation,
    assignment_matrix,
    expert_load,
    real_tokens,
    routing_entropy,
    routing_margin,
    top1_expert,
)
from smoe.workbench.train.run_folder import jsonl_bytes, read_jsonl

TRACE_FILE = "routing_trace.jsonl"
PROBE_SEED = 0


@dataclass
class Probe:
    """A fixed held-out set for routing analytics.

    inputs: the batches, each the positional arguments of one model call; labels: {name: (N,) long}, a label per
    routed token of all calls in order (masked tokens included, they are ignored through the routing mask);
    metric(model, generator): the task's headline metric on this set (for top-expert sensitivity);
    latent(model, generator): (n, z) latent code of each sample (the VAE), or None.

    What the routing pictures (`workbench.run.routing_view`) show: display, the n samples as a reader sees them (token
    ids (n, T), images (n, C, H, W) or signals (n, C, L) in their raw value range); prefix_tokens, routed tokens of
    a sample before its own (the ViT's [CLS]); tokenizer, the `tokenizers.Tokenizer` of text ids; label_names,
    {label: name of each value} where the values have names (BBC topics, sketch classes).
    """

    inputs: list[tuple[Tensor, ...]]
    labels: dict[str, Tensor] = field(default_factory=dict)
    metric: Callable[[nn.Module, torch.Generator], float] | None = None
    latent: Callable[[nn.Module, torch.Generator], Tensor] | None = None
    display: Tensor | None = None
    prefix_tokens: int = 0
    tokenizer: object | None = None
    label_names: dict[str, list[str]] = field(default_factory=dict)


def spread(total: int, count: int) -> Tensor:
    """(min(count, total),) long: indices spread evenly over range(total), first and last included."""
    check_int("total", total, low=1)
    check_int("count", count, low=1)
    count = min(count, total)
    return torch.linspace(0, total - 1, count, dtype=torch.float64).round().long()


def probe_batches(*tensors: Tensor, batch_size: int) -> list[tuple[Tensor, ...]]:
    """Rows of tensors (sharing their first dim) cut into consecutive batches."""
    check_int("batch_size", batch_size, low=1)
    n = tensors[0].shape[0]
    return [tuple(t[lo:lo + batch_size] for t in tensors) for lo in range(0, n, batch_size)]


def probe_generator() -> torch.Generator:
    """The generator of probe calls (eval mode draws nothing in the shipped models; a seeded one all the same)."""
    return torch.Generator().manual_seed(PROBE_SEED)


# ---------------------------------------------------------------- routing the probe set


@dataclass
class ProbeRouting:
    """What the probe set did in each MoE layer (in `model.moe_layers()` order): routing (all calls
    concatenated), router inputs (N, d) and the dispatcher's MoEStats of every call."""

    names: list[str]
    routings: list[Routing]
    inputs: list[Tensor]
    stats: list[list[MoEStats]]


@torch.no_grad()
def route_probe(model: nn.Module, probe: Probe, generator: torch.Generator | None = None) -> ProbeRouting:
    """Run the probe set through `model` in eval mode (restoring its mode) and record every MoE layer."""
    device = next(model.parameters()).device
    generator = generator if generator is not None else probe_generator()
    was_training = model.training
    model.eval()
    try:
        with record_routing(model) as records:
            outputs = [model(*(t.to(device) for t in args), generator=generator) for args in probe.inputs]
    finally:
        model.train(was_training)
    names = list(records)
    stats = [[out.moe[i].stats for out in outputs] for i in range(len(names))]
    return ProbeRouting(names=names, routings=[records[n].routing for n in names],
                        inputs=[records[n].input for n in names], stats=stats)


def layer_snapshot(routing: Routing, stats: list[MoEStats]) -> dict:
    """JSON-able per-layer snapshot: each real token's top-1 expert and assigned experts, load, entropy, margin."""
    real = real_tokens(routing)
    assigned = assignment_matrix(routing)[real]
    load = expert_load(stats)
    return {
        "top1": top1_expert(routing)[real].tolist(),
        "experts": [row.nonzero().flatten().tolist() for row in assigned],
        "load": load.fractions.tolist(),
        "load_cv": load.cv,
        "entropy": routing_entropy(routing),
        "margin": routing_margin(routing) if routing.num_experts >= 2 else math.nan,
    }


def snapshot_fluctuation(before: dict, after: dict, num_experts: int) -> Fluctuation:
    """Fluctuation of one layer between two snapshots of the same probe set (see `layer_snapshot`)."""

    def unpack(snap: dict) -> tuple[Tensor, Tensor]:
        top1 = torch.tensor(snap["top1"], dtype=torch.long)
        sets = torch.zeros(top1.shape[0], num_experts, dtype=torch.bool)
        for i, experts in enumerate(snap["experts"]):
            sets[i, experts] = True
        return top1, sets

    (t0, s0), (t1, s1) = unpack(before), unpack(after)
    return assignment_fluctuation(t0, t1, s0, s1)


def fluctuation_record(step: int, before: list[dict], after: list[dict], num_experts: list[int]) -> dict:
    """{"step", "top1": [per layer], "topk_set": [per layer]} between two snapshots of every layer."""
    per_layer = [snapshot_fluctuation(b, a, e) for b, a, e in zip(before, after, num_experts)]
    return {"step": step, "top1": [f.top1_changed for f in per_layer], "topk_set": [f.topk_changed for f in per_layer]}


# ---------------------------------------------------------------- the Trainer hook


class RoutingTrace:
    """Trainer hook: at every `every`-th step and at `last_step`, route the probe set and append a record
    {"step", "layers": [layer_snapshot...], "fluctuation": {"top1", "topk_set"} since the previous record} to
    `path` (JSON lines). Returns the mean fluctuation and load CV for the training log.

    On resume, records at or past the first step it sees come from beyond the checkpoint and are dropped; the
    last kept one is the previous snapshot. The model's train/eval mode is restored; nothing else is touched.
    Under torch.distributed every rank routes the probe (experts may be sharded) and rank 0 alone writes.
    """

    def __init__(self, model: nn.Module, probe: Probe, path: str | Path, every: int, last_step: int):
        check_int("every", every, low=0)
        check_int("last_step", last_step, low=1)
        self.model, self.probe, self.path = model, probe, Path(path)
        self.every, self.last_step = every, last_step
        self.previous: dict | None = None
        self.started = False
        self.writes = not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)

    def _start(self, step: int) -> None:
        kept = [r for r in read_jsonl(self.path) if r["step"] < step]  # a torn last line dropped with a warning
        if self.writes and self.path.exists():
            atomic_write(self.path, jsonl_bytes(kept))
        self.previous = kept[-1] if kept else None
        self.started = True

    def due(self, step: int) -> bool:
        return step == self.last_step or (self.every > 0 and step % self.every == 0)

    def __call__(self, step: int, outputs) -> dict[str, float] | None:
        if not self.started:
            self._start(step)
        if not self.due(step):
            return None
        probed = route_probe(self.model, self.probe)
        layers = [layer_snapshot(r, s) for r, s in zip(probed.routings, probed.stats)]
        record = {"step": step, "layers": layers}
        log = {"routing/load_cv": _mean([layer["load_cv"] for layer in layers])}
        if self.previous is not None:
            fluct = fluctuation_record(step, self.previous["layers"], layers, [r.num_experts for r in probed.routings])
            record["fluctuation"] = {"top1": fluct["top1"], "topk_set": fluct["topk_set"]}
            log["routing/fluctuation_top1"] = _mean(fluct["top1"])
        if self.writes:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.previous = record
        return log


def read_trace(run_dir: str | Path) -> list[dict]:
    """The records of RUN_DIR/routing_trace.jsonl in step order ([] when the run has none)."""
    return sorted(read_jsonl(Path(run_dir) / TRACE_FILE), key=lambda r: r["step"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
