"""The data of the routing pictures: what a trained model does with a few samples of its probe set (or with a
user's text), per MoE layer, as JSON-able dicts; `analyze` writes one to RUN_DIR/routing_view.json and
`workbench.report.routing_plots` draws it.

Legend: L MoE layers, E experts, n probe samples, T routed tokens of a sample (patches; 1 for the VAE, whose
samples are routed whole), C values of a label.

A view: {"step", "task", "router", "kind": "text" | "image" | "signal" | "whole", "num_experts": E,
  "layers": [L module names],
  "samples": [{"index": probe sample, "tokens": [T str] (text) | "image": [[H x W ints 0-255]] | "signal": [floats],
               "routes": [per layer {"top1", "weight1", "top2", "weight2": [T]}]}],   # -1 / 0: no such expert
  "grid": [rows, cols] of patches (image, signal), "prefix": routed tokens before the patches ([CLS]),
  "weights": [per layer [[E] per row]]: routing weights of the first sample's tokens (whole: of the first samples),
  "groups": [per layer [[sample] per expert]] (whole): samples by top-1 expert, each {"index", "image"},
  "load": [per layer {"steps": [...], "fractions": [[E] per step]}] from the routing trace,
  "top_tokens": [per layer [[[token, count, share]] per expert]] (text),
  "labels": {name: {"names": [C], "counts": [per layer [[C] per expert]]}}}  # top-1 expert x label
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from smoe._files import atomic_write
from smoe.routing.base import Routing
from smoe.workbench.measure.probe import Probe, ProbeRouting, route_probe, spread
from smoe.workbench.measure.routing_metrics import real_tokens, top1_expert

VIEW_FILE = "routing_view.json"
SHOWN = {"text": 3, "image": 8, "signal": 6, "whole": 16}  # samples shown per kind
PER_EXPERT = 8  # images per expert (whole), tokens per expert (text)
MIN_TOKEN_COUNT = 2  # a token must occur this often in the probe set to be listed for an expert


def sample_kind(probe: Probe, tokens_per_sample: int) -> str:
    """"text", "image", "signal" or "whole" (a sample is one routed token) from the probe's display data."""
    if probe.display is None:
        raise ValueError("the probe has no display data (Probe.display); its task cannot draw routing pictures")
    if tokens_per_sample - probe.prefix_tokens == 1:
        return "whole"
    if not probe.display.is_floating_point():
        return "text"
    return {4: "image", 3: "signal"}.get(probe.display.dim(), "whole")


def dense_weights(routing: Routing) -> Tensor:
    """(N, E) float: the kept weight of each (token, expert) pair, 0 elsewhere and on masked tokens."""
    keep = real_tokens(routing)[routing.token]
    out = torch.zeros(routing.num_tokens, routing.num_experts, dtype=torch.float32)
    return out.index_put((routing.token[keep].cpu(), routing.expert[keep].cpu()),
                         routing.weight[keep].detach().float().cpu(), accumulate=True)


def token_routes(routing: Routing, weights: Tensor) -> dict[str, Tensor]:
    """Per token: top-1 expert (`metrics.top1_expert`) and its weight, the second expert by weight and its weight
    (-1 and 0 where there is none: a masked token, a token with fewer experts)."""
    top1 = top1_expert(routing).cpu()
    has = top1 >= 0
    weight1 = torch.where(has, weights.gather(1, top1.clamp_min(0)[:, None])[:, 0], 0.0)
    others = weights.scatter(1, top1.clamp_min(0)[:, None], -1.0)
    weight2, top2 = others.max(1)
    second = has & (weight2 > 0)
    return {"top1": top1, "weight1": weight1, "top2": torch.where(second, top2, -1),
            "weight2": torch.where(second, weight2, 0.0)}


def _rounded(t: Tensor, digits: int = 3) -> list:
    return torch.round(t.double() * 10**digits).div(10**digits).tolist()


def _picture(x: Tensor) -> list:
    """An image (C, H, W) in [0, 1] as (H, W) grey levels 0-255 (channel mean)."""
    return (x.float().mean(0).clamp(0, 1) * 255).round().int().tolist()


def _grid(kind: str, display: Tensor, patches: int) -> list[int] | None:
    """[rows, cols] of the patches of one sample, from its shape; ValueError when they do not tile it."""
    if kind == "signal":
        return [1, patches]
    if kind != "image":
        return None
    h, w = display.shape[-2:]
    rows = round(math.sqrt(patches * h / w))
    if rows < 1 or patches % rows or h % rows or w % (patches // rows):
        raise ValueError(f"{patches} patches do not tile a {h}x{w} image")
    return [rows, patches // rows]


def _label_counts(top1: Tensor, labels: Tensor, num_experts: int, num_values: int) -> list:
    """(E, C) counts of real tokens with a known label (>= 0) by top-1 expert and label value."""
    ok = (top1 >= 0) & (labels >= 0)
    flat = top1[ok] * num_values + labels[ok]
    return torch.bincount(flat, minlength=num_experts * num_values).view(num_experts, num_values).tolist()


def _top_tokens(ids: Tensor, top1: Tensor, num_experts: int, decode) -> list:
    """Per expert, up to PER_EXPERT [token, count, share] among tokens seen >= MIN_TOKEN_COUNT times, ranked by
    count x share (frequent and specific): count = occurrences whose top-1 expert it is, share = count / all."""
    ok = top1 >= 0
    ids, top1 = ids[ok], top1[ok]
    vocab = int(ids.max()) + 1 if ids.numel() else 1
    total = torch.bincount(ids, minlength=vocab).double()
    out = []
    for e in range(num_experts):
        count = torch.bincount(ids[top1 == e], minlength=vocab).double()
        share = count / total.clamp_min(1)
        score = torch.where(total >= MIN_TOKEN_COUNT, count * share, 0.0)
        best = [i for i in score.argsort(descending=True)[:PER_EXPERT].tolist() if score[i] > 0]
        out.append([[decode(i), int(count[i]), round(float(share[i]), 3)] for i in best])
    return out


def _decoder(probe: Probe):
    tokenizer = probe.tokenizer
    if tokenizer is None:
        return lambda i: str(i)
    return lambda i: tokenizer.decode([int(i)]).replace("\n", "\u23ce")


def sample_entries(kind: str, probe: Probe, routes: list[dict[str, Tensor]], real: Tensor, indices: list[int],
                   display: Tensor) -> list[dict]:
    """The shown samples: what each looks like and its routes in every layer. real: (N,) bool, the routed tokens
    that are not padding (text samples keep only those)."""
    decode = _decoder(probe)
    per_sample = real.shape[0] // display.shape[0]
    out = []
    for i in indices:
        at = torch.arange(i * per_sample, (i + 1) * per_sample)
        entry: dict = {"index": i}
        if kind == "text":
            at = at[real[at]]
            entry["tokens"] = [decode(t) for t in display.reshape(-1)[at].tolist()]
        elif kind == "signal":
            entry["signal"] = _rounded(display[i].float().mean(0))
        else:
            entry["image"] = _picture(display[i])
        entry["routes"] = [{k: (v[at].tolist() if k in ("top1", "top2") else _rounded(v[at])) for k, v in r.items()}
                           for r in routes]
        out.append(entry)
    return out


def routing_view(probe: Probe, probed: ProbeRouting, trace: list[dict], head: dict | None = None) -> dict:
    """The view (module docstring) of a routed probe set (`route_probe`) and the run's routing trace."""
    samples = probe.display.shape[0] if probe.display is not None else 0
    n_tokens = probed.routings[0].num_tokens
    if not samples or n_tokens % samples:
        raise ValueError(f"the probe's display data ({samples} samples) does not match its {n_tokens} routed tokens")
    per_sample = n_tokens // samples
    kind = sample_kind(probe, per_sample)
    experts = probed.routings[0].num_experts
    weights = [dense_weights(r) for r in probed.routings]
    routes = [token_routes(r, w) for r, w in zip(probed.routings, weights)]
    shown = spread(samples, SHOWN[kind]).tolist()
    real = real_tokens(probed.routings[0]).cpu()
    view: dict = {**(head or {}), "kind": kind, "num_experts": experts, "layers": probed.names,
                  "prefix": probe.prefix_tokens,
                  "grid": _grid(kind, probe.display, per_sample - probe.prefix_tokens),
                  "samples": sample_entries(kind, probe, routes, real, shown, probe.display)}
    rows = torch.arange(shown[0] * per_sample, (shown[0] + 1) * per_sample)
    rows = torch.arange(min(SHOWN["whole"], samples)) if kind == "whole" else rows[real[rows]]
    view["weights"] = [_rounded(w[rows]) for w in weights]
    if kind == "whole":
        view["groups"] = [[[{"index": i, "image": _picture(probe.display[i])}
                            for i in (r["top1"] == e).nonzero().flatten()[:PER_EXPERT].tolist()]
                           for e in range(experts)] for r in routes]
    view["load"] = [{"steps": [rec["step"] for rec in trace],
                     "fractions": [_rounded(torch.tensor(rec["layers"][layer]["load"])) for rec in trace]}
                    for layer in range(len(routes))]
    if kind == "text":
        ids = probe.display.reshape(-1)
        view["top_tokens"] = [_top_tokens(ids, r["top1"], experts, _decoder(probe)) for r in routes]
    view["labels"] = {}
    for name, labels in probe.labels.items():
        names = probe.label_names.get(name) or [str(v) for v in range(int(labels.max()) + 1)]
        view["labels"][name] = {"names": names, "counts": [_label_counts(r["top1"], labels.cpu(), experts, len(names))
                                                           for r in routes]}
    return view


@torch.no_grad()
def text_samples(model: nn.Module, probe: Probe, text: str) -> dict:
    """The samples and weights entries of a view for a user's text, tokenized with the probe's tokenizer and cut
    to the model's max_len: {"samples": [one sample], "weights": [per layer (T, E)]}."""
    if probe.tokenizer is None:
        raise ValueError("--text needs a text task (its tokenizer); this run's task routes images")
    if not text.strip():
        raise ValueError("text must hold at least one non-blank character")
    ids = probe.tokenizer.encode(text, add_special_tokens=False).ids
    max_len = getattr(getattr(model, "config", None), "max_len", len(ids))
    ids = torch.tensor(ids[:max_len], dtype=torch.long)[None]
    inputs = (ids,) if len(probe.inputs[0]) == 1 else (ids, torch.ones_like(ids, dtype=torch.bool))
    probed = route_probe(model, Probe(inputs=[inputs]))
    weights = [dense_weights(r) for r in probed.routings]
    routes = [token_routes(r, w) for r, w in zip(probed.routings, weights)]
    user = Probe(inputs=[inputs], tokenizer=probe.tokenizer)
    return {"samples": sample_entries("text", user, routes, torch.ones(ids.shape[1], dtype=torch.bool), [0], ids),
            "weights": [_rounded(w) for w in weights]}


def write_view(run_dir: str | Path, view: dict) -> Path:
    """Write RUN_DIR/routing_view.json atomically; its path."""
    path = Path(run_dir) / VIEW_FILE
    atomic_write(path, json.dumps(view).encode())
    return path


def read_view(run_dir: str | Path) -> dict | None:
    """RUN_DIR/routing_view.json, or None when the run has none (or it is unreadable)."""
    path = Path(run_dir) / VIEW_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
