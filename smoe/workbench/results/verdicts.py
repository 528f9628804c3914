"""A comparison's verdicts against its baseline entry, from its results (`workbench.results.schema`), by the rule of
`workbench.measure.rule`.

Each compared column (`columns.is_compared`) of each entry but the baseline is one member of a family, and the
rule adjusts over the members of a family (Bonferroni: simultaneous intervals):

- "headline": the headline metric and the strongest corruption (`strongest_corruption`), over the entries;
- "robustness": the other corruption columns, over the entries;
- "routing": the routing columns (balance, fluctuation, entropy, ...), over the entries; never with a margin.

A margin (`rule.Margin`, e.g. "2%" of the baseline) applies to the headline and robustness families. Per seed the
values are paired by seed; a seed whose run failed or whose headline metric is not finite counts as diverged in
every column of that entry (`diverged_seeds`): it stays in the count and rules out the verdicts in that entry's
favour. Verdicts read `better` / `worse` (and with a margin `equivalent`, `non-inferior`, `non-superior`) in the
column's good direction (`columns.column_direction`), `higher` / `lower` for a column without one.

`with_statistics` adds "entries", "baseline", "alpha", "margin", "families", "comparisons" and "noise" to results
(what `smoe compare` writes in results.json version 3); a version 3 file judged by the same baseline, alpha and
margin is returned as it is, so the statistics are computed once.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Literal

from smoe.workbench.measure.rule import Margin, Pair, Rule, judge
from smoe.workbench.measure.stats import dominant_noise
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

SeedValues = dict[str, dict[int, dict[str, float]]]  # label -> seed -> column key -> value
RECORDED = "recorded"  # with_statistics: keep the margin the results record
COMPARABLE = 0.5  # evaluation sd at least this share of the seed sd: the test split limits the verdicts


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


def _seed(run: Mapping) -> int | None:
    seed = number(run.get("seed"))
    return int(seed) if seed is not None and math.isfinite(seed) else None


def seed_values(results: Mapping) -> SeedValues:
    """label -> seed -> column values of its finished run (`columns.run_values`); a later run of a seed wins."""
    done = [run for run in results["runs"] if is_finished(run)]
    strongest = strongest_levels(done)
    out: SeedValues = {label: {} for label in entry_labels(results)}
    for run in done:
        if (seed := _seed(run)) is not None:
            out[run_label(run)][seed] = run_values(run, strongest)
    return out


def diverged_seeds(results: Mapping) -> dict[str, set[int]]:
    """label -> the seeds whose (last) run failed or finished with a headline metric that is not finite."""
    last: dict[tuple[str, int], Mapping] = {}
    for run in results["runs"]:
        if run.get("status") != "skipped" and (seed := _seed(run)) is not None:
            last[run_label(run), seed] = run
    out: dict[str, set[int]] = {label: set() for label in entry_labels(results)}
    for (label, seed), run in last.items():
        metric = number((run.get("final") or {}).get("metric")) if isinstance(run.get("final"), Mapping) else None
        if not is_finished(run) or (metric is not None and not math.isfinite(metric)):
            out[label].add(seed)
    return out


def series(values: SeedValues, diverged: Mapping[str, set[int]], label: str, key: str,
            seeds: Sequence[int]) -> list[float | None]:
    """The column's value at each seed: nan where the run diverged, None where there is no value."""
    runs = values.get(label, {})
    return [math.nan if s in diverged.get(label, ()) else runs.get(s, {}).get(key) for s in seeds]


def judge_columns(values: SeedValues, diverged: Mapping[str, set[int]], keys: Sequence[str], baseline: str,
                  higher_is_better: bool | None, rule: Rule) -> dict[str, dict[str, dict]]:
    """Column key -> label -> the verdict of that entry on that column against `baseline`, all (key, label) one
    family under `rule`: `PairedResult.to_dict()` with "seeds" (paired, finite), "diverged_seeds" and
    "baseline_diverged_seeds" instead of positions, "direction", "baseline". An entry without a seed paired with the
    baseline on a column is not a member."""
    seeds = sorted({s for runs in values.values() for s in runs} | {s for d in diverged.values() for s in d})
    pairs, where = {}, {}
    for key in keys:
        base = series(values, diverged, baseline, key, seeds)
        for label in values:
            if label == baseline:
                continue
            entry = series(values, diverged, label, key, seeds)
            if any(e is not None and b is not None for e, b in zip(entry, base)):
                pairs[key, label] = Pair(entry, base, column_direction(key, higher_is_better))
                where[key, label] = (entry, base)
    out: dict[str, dict[str, dict]] = {}
    for (key, label), result in judge(pairs, rule).items():
        entry, base = where[key, label]
        record = result.to_dict()
        del record["diverged"], record["baseline_diverged"]
        out.setdefault(key, {})[label] = {
            **record, "seeds": [s for s, e, b in zip(seeds, entry, base) if is_finite(e) and is_finite(b)],
            "diverged_seeds": [seeds[i] for i in result.diverged],
            "baseline_diverged_seeds": [seeds[i] for i in result.baseline_diverged],
            "direction": column_direction(key, higher_is_better), "baseline": baseline}
    return out


def families(keys: Sequence[str], strongest: str | None) -> dict[str, list[str]]:
    """Family name -> its columns (see the module docstring); empty families left out."""
    headline = [k for k in ("final.metric", strongest) if k in keys]
    robust = [k for k in keys if k.startswith("robust.") and k not in headline]
    routing = [k for k in keys if k not in headline and k not in robust]
    return {name: cols for name, cols in (("headline", headline), ("robustness", robust), ("routing", routing))
            if cols}


def _statistics(results: Mapping, baseline: str, alpha: float, margin: Margin | None) -> tuple[dict, dict]:
    """(comparisons, families) of results against baseline."""
    _, higher_is_better = metric_spec(results)
    values, diverged = seed_values(results), diverged_seeds(results)
    keys = dict.fromkeys(k for runs in values.values() for v in runs.values() for k in v if is_compared(k))
    ordered = sorted(keys, key=lambda k: k != "final.metric")  # then in `run_values` order
    comparisons: dict[str, dict[str, dict]] = {}
    described = {}
    for name, cols in families(ordered, strongest_corruption(results, baseline)).items():
        rule = Rule(alpha=alpha, margin=None if name == "routing" else margin, family=name)
        judged = judge_columns(values, diverged, cols, baseline, higher_is_better, rule)
        size = sum(len(v) for v in judged.values())
        if size:
            comparisons.update(judged)
            described[name] = {"columns": [c for c in cols if c in judged], "size": size,
                               "adjustment": rule.adjustment, "alpha": alpha,
                               "margin": None if rule.margin is None else str(rule.margin),
                               "rule": rule.describe(size)}
    return {k: comparisons[k] for k in ordered if k in comparisons}, described


def paired_comparisons(results: Mapping, baseline: str | None = None, alpha: float = 0.05,
                       margin: Margin | None = None) -> dict[str, dict[str, dict]]:
    """Column key -> entry label -> its verdict against `baseline` (`judge_columns`), each family judged as one.
    baseline None: the recorded one, else the first entry (`pick_baseline`)."""
    results = load_results(results)
    baseline = pick_baseline(results, baseline)
    return {} if baseline is None else _statistics(results, baseline, alpha, margin)[0]


def noise(results: Mapping) -> dict[str, float | str | bool | None]:
    """Noise of the headline metric: "eval_sd" (root mean square over finished runs of each run's bootstrap sd over
    its test samples, `eval_sd`), "seed_sd" (sd over seeds within an entry, pooled over entries: sqrt of the
    degrees-of-freedom-weighted mean variance), "dominant" (the larger; None unless both are known) and
    "comparable" (eval_sd >= COMPARABLE x seed_sd: the verdicts hold for this test split only)."""
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
    both = eval_sd is not None and seed_sd is not None
    return {"eval_sd": eval_sd, "seed_sd": seed_sd, "dominant": dominant_noise(eval_sd, seed_sd) if both else None,
            "comparable": eval_sd >= COMPARABLE * seed_sd if both else None}


def with_statistics(results: Mapping, baseline: str | None = None, alpha: float = 0.05,
                    margin: Margin | Literal["recorded"] | None = RECORDED) -> dict:
    """results (version 1, 2 or 3) as version 3 with the verdicts against `baseline` (None: the recorded one) at
    `alpha` with `margin` (RECORDED: the one the results record, else none). A version 3 file already judged that
    way is returned as it is. The headline verdicts of a sequential comparison are its rule's
    (`results.sequential.apply_sequential`)."""
    results = load_results(results)
    baseline = pick_baseline(results, baseline)
    recorded = results.get("margin") if results.get("schema") == SCHEMA_VERSION else None
    margin = (Margin.parse(recorded) if recorded else None) if margin == RECORDED else margin
    if (results.get("schema") == SCHEMA_VERSION and results.get("baseline") == baseline
            and results.get("alpha") == alpha and recorded == (None if margin is None else str(margin))):
        return apply_sequential(results)
    comparisons, described = ({}, {}) if baseline is None else _statistics(results, baseline, alpha, margin)
    return apply_sequential({**results, "schema": SCHEMA_VERSION, "entries": entry_labels(results),
                             "baseline": baseline, "alpha": alpha, "margin": None if margin is None else str(margin),
                             "families": described, "comparisons": comparisons, "noise": noise(results)})


def beats_every_other(results: Mapping, label: str, alpha: float = 0.05) -> bool:
    """True when `label`'s headline metric is resolved better than every other entry's (each compared with it,
    paired, one family): what a "(best)" mark may claim. False without a direction or without another entry."""
    results = load_results(results)
    _, higher_is_better = metric_spec(results)
    if higher_is_better is None:
        return False
    values = seed_values(results)
    against = judge_columns(values, diverged_seeds(results), ["final.metric"], label, higher_is_better,
                            Rule(alpha=alpha, family="best")).get("final.metric", {})
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
