"""Where the claims' runs and results live: the run store (outside the work tree: every run folder, checkpoints
included, so that a long `smoe claims run --all` resumes across days) and the data folder (in the repository:
each comparison's compact results.json, from which `smoe claims table` regenerates docs/results.md's tables).

- Store: `--store DIR`, else `$SMOE_STORE`, else `<smoe cache>/claims` (`$SMOE_CACHE`, else ~/.cache/smoe); the
  comparison NAME runs in STORE/NAME/ (`smoe compare` semantics: finished runs are never run again).
- Data: `--data DIR` (default docs/claims); DATA/NAME/results.json is the comparison's results.json made compact
  (`compact_results`): every run's per-seed values that a column of the statistics reads, the paired statistics
  ("comparisons"), the tuning record, the command and the machine; no checkpoints, no validation curves, no latent
  maps, no co-activation matrices.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from smoe._files import atomic_write
from smoe.data.text import default_cache_dir
from smoe.workbench.numbers import is_finite
from smoe.workbench.results.schema import RESULTS_FILE, load_results, number, records

STORE_ENV = "SMOE_STORE"
DEFAULT_DATA = "docs/claims"
DROPPED_RUN_KEYS = ("curve", "latent")  # a validation curve and a VAE's latent map: no claim reads them


def store_dir(store: str | os.PathLike | None = None) -> Path:
    """The run store: `store`, else $SMOE_STORE, else <smoe cache>/claims."""
    if store is not None and str(store).strip():
        return Path(store)
    return Path(os.environ.get(STORE_ENV) or default_cache_dir() / "claims")


def compact_run(run: Mapping) -> dict:
    """A run's record without what no compared column reads (`DROPPED_RUN_KEYS`, co-activation matrices)."""
    out = {key: value for key, value in run.items() if key not in DROPPED_RUN_KEYS}
    routing = run.get("routing")
    if isinstance(routing, Mapping) and "coactivation" in routing:
        out["routing"] = {**routing, "coactivation": [{k: v for k, v in c.items() if k != "matrix"}
                                                      for c in records(routing, "coactivation")]}
    return out


def compact_results(results: str | os.PathLike | Mapping) -> dict:
    """A comparison's results (dict, results.json or its folder) made compact: every run through `compact_run`."""
    results = load_results(results)
    return {**results, "runs": [compact_run(run) for run in results["runs"]]}


def write_compact(results: str | os.PathLike | Mapping, data_dir: str | os.PathLike) -> Path:
    """Write the compact results to data_dir/results.json."""
    path = Path(data_dir) / RESULTS_FILE
    atomic_write(path, json.dumps(compact_results(results), indent=1).encode() + b"\n")
    return path


def training_seconds(results: Mapping) -> float:
    """Training wall time summed over a comparison's runs and its tuning runs (`train_time_s`; the CPU time when
    every run has one thread)."""
    runs = [*records(results, "runs"), *records(results, "tuning", "runs")]
    return sum(t for run in runs if is_finite(t := number(run.get("train_time_s"))))
