"""A comparison's paired statistics against a baseline entry, from its results (`smoe.workbench.results.schema`).

For every compared column (`columns.is_compared`: the headline metric, robustness and routing columns) and every
entry but the baseline: the per-seed differences entry - baseline over the seeds where both runs finished with a
finite value, their mean, the 95 % Student-t interval, the p-value (exact sign-flip test where the seeds allow it,
else the paired t-test), Holm over the entries of that column, the verdict, the minimum detectable difference at
80 % power and the seeds the observed difference would need (`smoe.workbench.measure.stats`). Verdicts read `better` /
`worse` in the column's good direction (`columns.column_direction`), `higher` / `lower` for a column without one,
and `not resolved` when the Holm-adjusted p is not below alpha.

`with_statistics` adds "entries", "baseline", "comparisons" and "noise" to results (what `smoe compare` writes in
results.json version 2, and what the report computes for version 1 files).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

from smoe.workbench.measure.stats import compare_all, dominant_noise
from smoe.workbench.numbers import is_finite
from smoe.workbench.results.columns import column_direction, is_compared, run_values, strongest_levels
from smoe.workbench.results.schema import (
    SCHEMA_VERSION,
    entry_labels,
    is_finished,
    load_results,
    metric_spec,
    number,
    run_label,
)
from smoe.workbench.results.sequential import apply_sequential

UNDIRECTED = {"better": "higher", "worse": "lower", "not resolved": "not resolved"}

SeedValues = dict[str, dict[int, dict[str, float]]]  # label -> seed -> column key -> value


def pick_baseline(results: Mapping, baseline: str | None = None) -> str | None:
    """`baseline` checked against the entries; None: the results' recorded baseline, else the first entry (None
    when there is no entry)."""
    labels = entry_labels(results)
    if baseline is None:
        recorded = results.get("baseline")
        return recorded if recorded in labels else labels[0] if labels else None
    if baseline not in labels:
        raise ValueError(f"baseline must be one of the entries {', '.join(labels)}; got {baseline!r}")
    return baseline


def seed_values(results: Mapping) -> SeedValues:
    """label -> seed -> column values of its finished run (`columns.run_values`); a later run of a seed wins."""
    done = [run for run in results["runs"] if is_finished(run)]
    strongest = strongest_levels(done)
    out: SeedValues = {label: {} for label in entry_labels(results)}
    for run in done:
        seed = number(run.get("seed"))
        if seed is not None and math.isfinite(seed):
            out[run_label(run)][int(seed)] = run_values(run, strongest)
    return out


def compare_column(values: SeedValues, key: str, baseline: str, direction: bool | None,
                   alpha: float = 0.05) -> dict[str, dict]:
    """label -> paired result of column `key` against `baseline` (PairedResult.to_dict() + "seeds", "direction",
    "baseline"); entries without a seed paired with the baseline are left out, Holm runs over the others."""
    base = values[baseline]
    seeds = sorted({seed for runs in values.values() for seed in runs})
    series, used = {}, {}
    for label, runs in values.items():
        pairs = [s for s in seeds if is_finite(runs.get(s, {}).get(key)) and is_finite(base.get(s, {}).get(key))]
        if label == baseline or pairs:
            series[label] = [runs.get(s, {}).get(key) for s in seeds]
            used[label] = pairs
    if len(series) < 2:
        return {}
    out = {}
    for label, result in compare_all(series, baseline, direction is not False, alpha).items():
        entry = result.to_dict()
        if direction is None:
            entry["verdict"] = UNDIRECTED[result.verdict]
        out[label] = {**entry, "seeds": used[label], "direction": direction, "baseline": baseline}
    return out


def paired_comparisons(results: Mapping, baseline: str | None = None,
                       alpha: float = 0.05) -> dict[str, dict[str, dict]]:
    """Column key -> entry label -> `PairedResult.to_dict()` plus "seeds" (those paired), "direction" (True,
    False, None) and "baseline"; pairs by seed (only seeds where both runs finished with a finite value), Holm over
    the entries within each column. baseline None: the recorded one, else the first entry (`pick_baseline`)."""
    results = load_results(results)
    baseline = pick_baseline(results, baseline)
    if baseline is None:
        return {}
    _, higher_is_better = metric_spec(results)
    values = seed_values(results)
    keys = dict.fromkeys(k for runs in values.values() for v in runs.values() for k in v if is_compared(k))
    comparisons = {key: compare_column(values, key, baseline, column_direction(key, higher_is_better), alpha)
                   for key in sorted(keys, key=lambda k: k != "final.metric")}  # then in `run_values` order
    return {key: entries for key, entries in comparisons.items() if entries}


def noise(results: Mapping) -> dict[str, float | str | None]:
    """Noise of the headline metric: "eval_sd" (root mean square over finished runs of each run's bootstrap sd over
    its test samples, `eval_sd`), "seed_sd" (sd over seeds within an entry, pooled over entries: sqrt of the
    degrees-of-freedom-weighted mean variance) and "dominant" (the larger; None unless both are known)."""
    results = load_results(results)
    done = [run for run in results["runs"] if is_finished(run)]
    sds = [v for run in done if is_finite(v := number(run.get("eval_sd")))]
    eval_sd = math.sqrt(statistics.fmean(v * v for v in sds)) if sds else None
    squares, dof = 0.0, 0
    for runs in seed_values(results).values():
        metric = [v["final.metric"] for v in runs.values() if is_finite(v.get("final.metric"))]
        if len(metric) >= 2:
            squares += statistics.variance(metric) * (len(metric) - 1)
            dof += len(metric) - 1
    seed_sd = math.sqrt(squares / dof) if dof else None
    dominant = dominant_noise(eval_sd, seed_sd) if eval_sd is not None and seed_sd is not None else None
    return {"eval_sd": eval_sd, "seed_sd": seed_sd, "dominant": dominant}


def with_statistics(results: Mapping, baseline: str | None = None, alpha: float = 0.05) -> dict:
    """results (version 1 or 2) as version 2: "entries", "baseline", "comparisons" and "noise" (re)computed; the
    headline verdicts of a sequential comparison are its rule's (`results.sequential`)."""
    results = load_results(results)
    baseline = pick_baseline(results, baseline)
    return apply_sequential({**results, "schema": SCHEMA_VERSION, "entries": entry_labels(results),
                             "baseline": baseline, "comparisons": paired_comparisons(results, baseline, alpha),
                             "noise": noise(results)})


def beats_every_other(results: Mapping, label: str, alpha: float = 0.05) -> bool:
    """True when `label`'s headline metric is resolved better than every other entry's (each compared with it,
    paired, Holm): what a "(best)" mark may claim. False without a direction or without another entry."""
    results = load_results(results)
    _, higher_is_better = metric_spec(results)
    if higher_is_better is None:
        return False
    values = seed_values(results)
    against = compare_column(values, "final.metric", label, higher_is_better, alpha)
    others = [other for other in values if other != label]
    return bool(others) and all(against.get(other, {}).get("verdict") == "worse" for other in others)


def strongest_corruption(results: Mapping, baseline: str) -> str | None:
    """The robustness column ("robust.<corruption>@<level>") where the baseline's mean metric is worst (input
    corruptions before test-time capacity sweeps); None when no run was evaluated under a corruption."""
    results = load_results(results)
    _, higher_is_better = metric_spec(results)
    runs = seed_values(results)[baseline].values()
    keys = sorted({k for v in runs for k in v if k.startswith("robust.")})
    means = {k: statistics.fmean(x) for k in keys if (x := [v[k] for v in runs if is_finite(v.get(k))])}
    if not means:
        return None

    def badness(key: str) -> tuple:
        capacity = key.startswith("robust.capacity-")
        return (capacity, 0.0 if higher_is_better is None else means[key] if higher_is_better else -means[key], key)

    return min(means, key=badness)
