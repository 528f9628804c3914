"""The `results.json` of a comparison (`smoe compare`): schema, loading, and field access that tolerates gaps.

Schema version 3 (every field of a run may be missing: a router without aux loss, a task without labels, a
failed run; readers show what is there and say what is missing):

    {"schema": 3, "task": str, "preset": str, "command": str, "created": str (ISO 8601),
     "metric": {"name": str, "higher_is_better": bool},            # the task's headline metric
     "machine": {"cpu": str, "threads": int, "torch": str, "device": str, "python": str,
                 "jobs": int | "cluster",              # runs trained at once on this machine
                 "cores": int, "load_average": [1, 5, 15-minute floats]},   # as results.json was written
     "provenance": {"smoe": str, "commit": str | null, "dirty": bool | null, "torch": str, "python": str,
                    "plugins": [{"spec", "module", "file", "sha256", "found"}], "cwd": str},   # which code ran
     "runs": [{
        "router": str, "label": str, "seed": int, "options": {...}, "run_dir": str,
        "status": "done" | "failed" | "skipped", "error": str | null,
        "train_time_s": float, "steps": int, "tokens_per_s": float,
        "load_average": float,                # highest 1-minute load average as its training (segments) ended
        "curve": [{"step": int, "valid_loss": float, "metric": float}, ...],      # validation over training
        "final": {"metric": float, "valid_loss": float, ...},                    # extra keys: extra columns
        "routing": {
          "layers": [{"layer": int, "load": [E floats], "first_choice": [E floats],  # share of tokens, top-1
                      "load_cv", "max_over_mean", "entropy", "entropy_own", "margin", "active_experts",
                      "dropped_fraction", "effective_rank_input", "effective_rank_router": float,
                      "specialization_nmi": {label_name: float}}],
          "fluctuation": [{"step": int, "top1": [per-layer floats], "topk_set": [per-layer floats]}],
          "coactivation": [{"layers": [l, l + 1], "nmi": float, "matrix": [[E floats], ...]}],
          "sensitivity": [{"layer": int, "clean": float, "dropped": float}]},   # task metric, top expert removed
        "robustness": [{"corruption": str, "level": int, "severity": float, "metric": float}],
        "eval_sd": float,                     # bootstrap sd of final.metric over the run's test samples
        "latent": {"points": [[x, y], ...], "expert": [int, ...], "label": [int, ...]}}],   # optional (VAE)
     # verdicts against the baseline (`smoe.workbench.results.verdicts`; version 2 had comparisons and noise only):
     "entries": [label, ...],                 # the comparison's entries, in order
     "baseline": label,                       # what every other entry is compared with (default: the first)
     "alpha": float, "margin": "2%" | "0.5" | null,     # the level and the margin (of the baseline, or absolute)
     "families": {"headline" | "robustness" | "routing": {"columns": [key, ...], "size": int, "adjustment": str,
                  "alpha": float, "margin": str | null, "rule": str}},   # each family's rule, stated
     "comparisons": {column key: {label: {
        "n", "differences", "seeds",          # the paired seeds where both finished with a finite value
        "diverged_seeds", "baseline_diverged_seeds",      # seeds where the entry / the baseline diverged or failed
        "mean", "sd", "test" ("t" | "sign-flip"), "p_value" (raw), "p_adjusted", "level" (judged at),
        "ci_low", "ci_high",                  # the interval at confidence 1 - level, of the test that decides
        "verdict", "family", "family_size", "adjustment", "alpha", "margin" (metric units), "margin_spec",
        "d_z", "relative" (% of the baseline), "prob_improvement", "prob_improvement_low", "prob_improvement_high",
        "mdd", "seeds_needed", "note", "direction", "baseline"}}},   # every entry but the baseline
     "noise": {"eval_sd": float, "seed_sd": float, "dominant": "seed" | "evaluation", "comparable": bool},
     "tuning": {...}}                         # optional: each entry's pick on the validation split, its runs
                                              # (`smoe.workbench.grid.tune`); the runs above are at the picks

`label` tells apart runs of one router with different options; runs are grouped by label (router name when
there is no label). Only runs with status "done" (or no status) enter tables and plots. NaN and infinities
may appear (a diverged run); they are kept as floats so that readers can show them as "n/a". Version 1 files (no
entries, baseline, comparisons, noise, eval_sd) and version 2 files (verdicts by an older rule) still load;
`verdicts.with_statistics` judges them again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
RESULTS_FILE = "results.json"
NOT_FINISHED = ("failed", "skipped")


def load_results(source: str | os.PathLike | Mapping) -> dict:
    """The results as a dict, from a dict, a results.json path or the directory holding it; checks the schema."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            path = path / RESULTS_FILE
        if not path.is_file():
            raise ValueError(f"results must name an existing {RESULTS_FILE} or a directory holding one, got {path}")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"results: {path} is not valid JSON ({err})") from err
    elif isinstance(source, Mapping):
        results = source
    else:
        raise ValueError(f"results must be a path to {RESULTS_FILE} or a dict, got {type(source).__name__}")
    if not isinstance(results, Mapping):
        raise ValueError(f"results must hold a JSON object, got {type(results).__name__}")
    if results.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"results['schema'] must be one of {READABLE_SCHEMAS}, got {results.get('schema')!r}")
    runs = results.get("runs")
    if not isinstance(runs, list) or not all(isinstance(run, Mapping) for run in runs):
        raise ValueError("results['runs'] must be a list of run objects")
    return dict(results)


def number(value: Any) -> float | None:
    """value as a float when it is a JSON number (NaN and inf kept), else None (missing, null, text, bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def get(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None where a key is missing or a level is not an object."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def records(obj: Any, *keys: str) -> list[Mapping]:
    """The objects of the list at obj[k1][k2]...; [] when it is missing or not a list."""
    value = get(obj, *keys)
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def numbers(value: Any) -> list[float] | None:
    """A list of JSON numbers as floats; None when it is missing, empty or holds anything else."""
    if not isinstance(value, list) or not value:
        return None
    out = [number(v) for v in value]
    return None if any(v is None for v in out) else out


def run_label(run: Mapping) -> str:
    """The name a run is grouped and shown under: its label, else its router, else "?"."""
    for key in ("label", "router"):
        if isinstance(run.get(key), str) and run[key]:
            return run[key]
    return "?"


def is_finished(run: Mapping) -> bool:
    """True unless the run's status says it failed or was skipped."""
    return run.get("status") not in NOT_FINISHED


def group_runs(results: Mapping) -> dict[str, list[Mapping]]:
    """label -> all its runs, labels in order of first appearance."""
    groups: dict[str, list[Mapping]] = {}
    for run in results["runs"]:
        groups.setdefault(run_label(run), []).append(run)
    return groups


def entry_labels(results: Mapping) -> list[str]:
    """The comparison's entries in order: results["entries"] (version 2) followed by any other label of a run, else
    the labels of the runs in order of first appearance (version 1)."""
    listed = results.get("entries")
    listed = [x for x in listed if isinstance(x, str)] if isinstance(listed, list) else []
    return list(dict.fromkeys([*listed, *(run_label(run) for run in results["runs"])]))


def metric_spec(results: Mapping) -> tuple[str, bool | None]:
    """(name of the headline metric, higher_is_better); "metric" and None where the results do not say."""
    name = get(results, "metric", "name")
    direction = get(results, "metric", "higher_is_better")
    return (name if isinstance(name, str) and name else "metric",
            direction if isinstance(direction, bool) else None)
