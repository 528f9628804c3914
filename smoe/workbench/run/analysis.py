"""`smoe analyze RUN_DIR`: every routing metric of a trained run, on its task's probe set
(`workbench.measure.probe`), plus the routing trace recorded during training; printed as tables and written to
RUN_DIR/analysis.json.

Legend: N routed tokens of the probe set, M real ones, E experts, L MoE layers.

analysis.json: {"step", "task", "router", "probe": {"tokens": M, "labels": [names]},
  "routing": the `routing` object of the results.json schema (`workbench.results.schema`): per-layer load,
      load CV, max/mean, entropy, margin, active experts, dropped fraction, effective rank of router inputs and
      router features, specialization NMI per label, experts per token (kept pairs / M); fluctuation between
      consecutive traced evals; cross-layer co-activation; top-expert sensitivity per layer,
  "over_training": [{"step", "load_cv": [L], "entropy": [L], "margin": [L]}] from the trace,
  "latent": {"points", "expert", "label"} (t-SNE of the VAE latent coloured by top-1 expert; VAE only),
  "view": whether RUN_DIR/routing_view.json (the routing pictures' data, `workbench.run.routing_view`) was written}

Metric definitions: docs/metrics.md (`workbench.measure.routing_metrics`). All on the model in eval mode.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
from torch import nn

from smoe._files import atomic_write
from smoe.layer import MoEStats, moe_layers
from smoe.routing.base import Routing
from smoe.workbench.document import Table, render_markdown
from smoe.workbench.measure.instrumentation import routing_override
from smoe.workbench.measure.probe import Probe, ProbeRouting, probe_generator, read_trace, route_probe
from smoe.workbench.measure.routing_metrics import (
    coactivation,
    coactivation_nmi,
    drop_top_expert,
    expert_specialization,
    real_tokens,
    routing_summary,
    top1_expert,
)
from smoe.workbench.numbers import format_number
from smoe.workbench.run.routing_view import routing_view, write_view
from smoe.workbench.run.runner import load_run
from smoe.workbench.train.run_folder import hold_folder

ANALYSIS_FILE = "analysis.json"
# routing_summary key -> results.json schema key
SCHEMA_KEYS = {"load_cv": "load_cv", "load_max_over_mean": "max_over_mean", "entropy": "entropy", "margin": "margin",
               "active_experts": "active_experts", "dropped_fraction": "dropped_fraction",
               "input_rank": "effective_rank_input", "feature_rank": "effective_rank_router",
               "entropy_own": "entropy_own"}


def layer_metrics(index: int, routing: Routing, stats: list[MoEStats], inputs: torch.Tensor,
                  labels: dict[str, torch.Tensor]) -> dict:
    """The per-layer entry of the schema: load after capacity, summaries, specialization NMI per label."""
    summary = routing_summary(routing, stats, inputs)
    counts = torch.stack([s.counts for s in stats]).sum(0).double()
    real = int(real_tokens(routing).sum())
    out = {"layer": index, "load": (counts / counts.sum().clamp_min(1)).tolist(),
           **{SCHEMA_KEYS[k]: v for k, v in summary.items()},
           "experts_per_token": float(counts.sum()) / real if real else math.nan}
    out["specialization_nmi"] = {name: expert_specialization(routing, y) for name, y in labels.items()}
    return out


def coactivations(routings: list[Routing]) -> list[dict]:
    """Co-activation of every pair of consecutive layers (P(expert j next | expert i here), and its NMI)."""
    return [{"layers": [i, i + 1], "nmi": coactivation_nmi(a, b), "matrix": coactivation(a, b).tolist()}
            for i, (a, b) in enumerate(itertools.pairwise(routings))]


@torch.no_grad()
def sensitivities(model: nn.Module, probe: Probe) -> list[dict]:
    """Per layer: the probe metric clean and with every token's top expert removed in that layer only (remaining
    weights renormalised, `workbench.measure.routing_metrics.drop_top_expert`), for every layer of
    `smoe.layer.moe_layers`."""
    if probe.metric is None:
        return []
    clean = float(probe.metric(model, probe_generator()))
    out = []
    for i, layer in enumerate(moe_layers(model)):
        with routing_override(layer, drop_top_expert):
            out.append({"layer": i, "clean": clean, "dropped": float(probe.metric(model, probe_generator()))})
    return out


@torch.no_grad()
def latent_map(model: nn.Module, probe: Probe, probed: ProbeRouting, seed: int = 0) -> dict | None:
    """t-SNE (scikit-learn, 2-D, PCA init) of the probe samples' latent codes, with each sample's top-1 expert
    (first MoE layer) and first label; None when the task has no latent."""
    if probe.latent is None:
        return None
    from sklearn.manifold import TSNE

    z = probe.latent(model, probe_generator()).double().cpu().numpy()
    if z.shape[0] < 5:
        return None
    points = TSNE(2, perplexity=min(30.0, (z.shape[0] - 1) / 3), init="pca", random_state=seed).fit_transform(z)
    label = next(iter(probe.labels.values()), None)
    return {"points": points.tolist(), "expert": top1_expert(probed.routings[0]).tolist(),
            "label": [] if label is None else label.tolist()}


def trace_summaries(trace: list[dict]) -> tuple[list[dict], list[dict]]:
    """(fluctuation records, per-eval summaries) of a routing trace (`smoe.workbench.measure.probe.RoutingTrace`)."""
    fluctuation = [{"step": r["step"], **r["fluctuation"]} for r in trace if "fluctuation" in r]
    over = [{"step": r["step"], **{key: [layer[key] for layer in r["layers"]] for key in ("load_cv", "entropy",
                                                                                         "margin")}}
            for r in trace]
    return fluctuation, over


def analyze(model: nn.Module, probe: Probe, run_dir: str | Path, step: int, head: dict | None = None) -> dict:
    """Every metric of the module docstring for a trained `model` (eval mode) and its probe set; writes
    RUN_DIR/analysis.json (and RUN_DIR/routing_view.json, the routing pictures' data, `workbench.run.routing_view`,
    when the probe has display data) and returns the analysis. head: extra top-level fields (task, router)."""
    probed = route_probe(model, probe)
    layers = [layer_metrics(i, r, s, x, probe.labels)
              for i, (r, s, x) in enumerate(zip(probed.routings, probed.stats, probed.inputs))]
    trace = read_trace(run_dir)
    fluctuation, over = trace_summaries(trace)
    analysis = {
        "step": step, **(head or {}),
        "probe": {"tokens": int(real_tokens(probed.routings[0]).sum()), "labels": list(probe.labels)},
        "routing": {"layers": layers, "fluctuation": fluctuation, "coactivation": coactivations(probed.routings),
                    "sensitivity": sensitivities(model, probe)},
        "over_training": over,
    }
    latent = latent_map(model, probe, probed)
    if latent is not None:
        analysis["latent"] = latent
    analysis["view"] = probe.display is not None
    atomic_write(Path(run_dir, ANALYSIS_FILE), json.dumps(analysis, indent=1).encode())
    if analysis["view"]:
        write_view(run_dir, routing_view(probe, probed, trace, {"step": step, **(head or {})}))
    return analysis


def analyze_run(run_dir: str | Path, device: str | None = None) -> dict:
    """Load the run in `run_dir` (latest checkpoint) and `analyze` it, holding the run folder's writer lock."""
    with hold_folder(run_dir, create=False):
        run, setup, step = load_run(run_dir, device)
        if setup.probe is None:
            raise ValueError(f"the run in {run_dir} has no probe set (data.probe_tokens=0): nothing to analyse")
        return analyze(setup.model, setup.probe, run_dir, step, {"task": run.task, "router": run.router})


# ---------------------------------------------------------------- printing


def _num(x) -> str:
    return format_number(x) if isinstance(x, float) else str(x)


def format_analysis(analysis: dict) -> str:
    """The analysis as Markdown tables: per layer, fluctuation over training, co-activation."""
    routing = analysis["routing"]
    layers = routing["layers"]
    names = list(dict.fromkeys(n for layer in layers for n in layer["specialization_nmi"]))
    dropped = {s["layer"]: s["dropped"] - s["clean"] for s in routing["sensitivity"]}
    columns = ["load_cv", "max_over_mean", "dropped_fraction", "entropy", "margin", "active_experts",
               "experts_per_token", "effective_rank_input", "effective_rank_router"]
    header = ["layer", *columns, *(f"NMI {n}" for n in names), "top-expert sensitivity"]
    rows = [[str(layer["layer"]), *(_num(layer.get(c, math.nan)) for c in columns),
             *(_num(layer["specialization_nmi"][n]) for n in names), _num(dropped.get(layer["layer"], math.nan))]
            for layer in layers]
    blocks = [Table(header, rows)]
    if routing["fluctuation"]:
        n = len(layers)
        header = ["step", *(f"top-1 changed L{i}" for i in range(n)), *(f"top-k set changed L{i}" for i in range(n))]
        blocks.append(Table(header, [[str(f["step"]), *map(_num, f["top1"]), *map(_num, f["topk_set"])]
                                     for f in routing["fluctuation"]]))
    if routing["coactivation"]:
        blocks.append(Table(["layers", "co-activation NMI"], [[f"{c['layers'][0]} -> {c['layers'][1]}", _num(c["nmi"])]
                                                                for c in routing["coactivation"]]))
    title = (f"{analysis.get('task', '?')} / {analysis.get('router', '?')} at step {analysis['step']}, probe set of "
             f"{analysis['probe']['tokens']} tokens")
    return title + "\n\n" + render_markdown(blocks)
