"""The columns of a comparison: what each run's record yields (`run_values`), the titles, and each column's good
direction (`column_direction`), shared by the report (`workbench.report.comparison`) and the statistics
(`workbench.results.verdicts`).

Keys: "final.<key>" (each key of a run's `final`; "final.metric" is the task's headline metric),
"robust.<corruption>@<level>" (the metric at the strongest level any run evaluated), "routing.<scalar>" (mean over
MoE layers), "routing.nmi.<label name>", "fluctuation.top1|topk_set" (the last record), "coactivation.nmi",
"sensitivity", and the run counters "steps", "train_time_s", "tokens_per_s".

Directions (docs/metrics.md): True = higher is better, False = lower is better, None = no preferred direction.
The headline metric and the robustness columns take the task's; load CV, max/mean load, dropped fraction and
fluctuation are lower-is-better (balance, no lost tokens, stable routing); entropy, margin, active experts,
effective ranks, NMI, co-activation and sensitivity describe routing without a better side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from smoe.workbench.results.schema import get, number, numbers, records

# routing.layers[*] scalars, averaged over layers -> column title
ROUTING_SCALARS = {
    "load_cv": "load CV", "max_over_mean": "max/mean load", "entropy": "entropy", "entropy_own": "entropy (own gate)",
    "margin": "margin",
    "active_experts": "active experts", "dropped_fraction": "dropped", "effective_rank_input": "eff. rank input",
    "effective_rank_router": "eff. rank router",
}
TITLES = {
    "final.valid_loss": "valid loss", "final.valid_metric": "valid metric",
    "final.experts_per_token": "experts per token", "final.eval_time_s": "eval time (s)", "steps": "steps",
    "train_time_s": "train time (s)", "tokens_per_s": "tokens/s",
    **{f"routing.{key}": title for key, title in ROUTING_SCALARS.items()},
    "fluctuation.top1": "fluct. top-1 (last)", "fluctuation.topk_set": "fluct. top-k set (last)",
    "coactivation.nmi": "co-activation NMI", "sensitivity": "top-expert sensitivity",
}
RUN_COUNTERS = ("steps", "train_time_s", "tokens_per_s")
LATE_ROUTING = ("fluctuation.top1", "fluctuation.topk_set", "coactivation.nmi", "sensitivity")

def _mean_of(items: Sequence, value: Callable[[object], float | None]) -> float | None:
    """Mean of value(item) over the items where it is a number (NaN/inf propagate); None when there are none."""
    found = [v for v in map(value, items) if v is not None]
    return sum(found) / len(found) if found else None


def _sensitivity(entry: Mapping) -> float | None:
    clean, dropped = number(entry.get("clean")), number(entry.get("dropped"))
    return None if clean is None or dropped is None else dropped - clean


def _last_fluctuation(run: Mapping) -> Mapping | None:
    """The fluctuation record with the largest step (the last one listed when steps are missing or tie)."""
    entries = records(run, "routing", "fluctuation")

    def step(ie: tuple[int, Mapping]) -> tuple[float, int]:
        s = number(ie[1].get("step"))
        return (s if s is not None and math.isfinite(s) else -math.inf, ie[0])

    return max(enumerate(entries), key=step)[1] if entries else None


def strongest_levels(runs: Sequence[Mapping]) -> dict[str, float]:
    """corruption -> the highest level any of the runs evaluated."""
    levels: dict[str, float] = {}
    for run in runs:
        for entry in records(run, "robustness"):
            name, level = entry.get("corruption"), number(entry.get("level"))
            if isinstance(name, str) and level is not None and math.isfinite(level):
                levels[name] = max(level, levels.get(name, -math.inf))
    return levels


def run_values(run: Mapping, strongest: Mapping[str, float]) -> dict[str, float]:
    """Column key -> the run's value, for every quantity it recorded; routing scalars are means over layers.

    Keys: "final.<key>" (each key of `final`), "robust.<corruption>@<level>" (metric at the strongest level),
    "routing.<scalar>", "routing.nmi.<label name>", "fluctuation.top1|topk_set" (last record), "coactivation.nmi"
    (mean over layer pairs), "sensitivity" (dropped - clean metric, mean over layers), and RUN_COUNTERS.
    """
    values: dict[str, float | None] = {}
    final = get(run, "final")
    for key, value in (final.items() if isinstance(final, Mapping) else ()):
        values[f"final.{key}"] = number(value)
    for name, level in strongest.items():
        values[f"robust.{name}@{level:g}"] = next(
            (number(e.get("metric")) for e in records(run, "robustness")
             if e.get("corruption") == name and number(e.get("level")) == level), None)
    for key in RUN_COUNTERS:
        values[key] = number(run.get(key))
    layers = records(run, "routing", "layers")
    for key in ROUTING_SCALARS:
        values[f"routing.{key}"] = _mean_of(layers, lambda layer, key=key: number(layer.get(key)))
    nmi = [d for layer in layers if isinstance(d := layer.get("specialization_nmi"), Mapping)]
    for name in dict.fromkeys(name for d in nmi for name in d):
        values[f"routing.nmi.{name}"] = _mean_of(nmi, lambda d, name=name: number(d.get(name)))
    last = _last_fluctuation(run)
    for key in ("top1", "topk_set"):
        values[f"fluctuation.{key}"] = _mean_of(numbers(get(last, key)) or [], lambda v: v)
    values["coactivation.nmi"] = _mean_of(records(run, "routing", "coactivation"), lambda c: number(c.get("nmi")))
    values["sensitivity"] = _mean_of(records(run, "routing", "sensitivity"), _sensitivity)
    return {key: value for key, value in values.items() if value is not None}



def column_title(key: str, metric_name: str, higher_is_better: bool | None) -> str:
    if key == "final.metric":
        return metric_name + {True: " (higher is better)", False: " (lower is better)", None: ""}[higher_is_better]
    if key.startswith("robust."):
        name, level = key[len("robust."):].rsplit("@", 1)
        return f"{metric_name} @ {name} L{level}"
    if key.startswith("routing.nmi."):
        return f"NMI {key[len('routing.nmi.'):]}"
    return TITLES.get(key, key.removeprefix("final."))

# routing columns with a better side; every other routing column has none (None)
LOWER_IS_BETTER = ("routing.load_cv", "routing.max_over_mean", "routing.dropped_fraction", "fluctuation.top1",
                   "fluctuation.topk_set")


def is_compared(key: str) -> bool:
    """True for the columns the statistics compare: the headline metric, robustness and routing columns."""
    return key == "final.metric" or key.startswith(("robust.", "routing.")) or key in LATE_ROUTING


def column_direction(key: str, higher_is_better: bool | None) -> bool | None:
    """The good direction of a compared column, given the task's (`higher_is_better` of the headline metric)."""
    if key == "final.metric" or key.startswith("robust."):
        return higher_is_better
    return False if key in LOWER_IS_BETTER else None
