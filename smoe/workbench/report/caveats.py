"""What a reader must know before trusting a comparison's numbers: each a sentence of the report's warnings.

- undertrained: an entry whose mean headline metric lies within UNDERTRAINED (a fraction) of its task's trivial model
  (`Task.trivial_key`: the unigram perplexity, the majority-class accuracy, the mean image's SSE), recorded beside the
  metric in every run's `final`;
- contention: costs (train time, throughput) measured while other runs shared the machine: more than one run trained
  at once (`machine.jobs`), or a load average above the cores (`machine.load_average`, the runs' `load_average`);
- idle experts: per entry and MoE layer, experts no token chose at all (`load` 0) or no token chose first
  (`first_choice` 0), with the seeds where it happened;
- diverged seeds: runs that failed or ended with a metric that is not a finite number; a verdict counts such a
  seed against its entry (`workbench.results.verdicts`).
"""

from __future__ import annotations

from collections.abc import Mapping

from smoe.workbench.numbers import finite_mean, format_number, is_finite
from smoe.workbench.results.schema import get, group_runs, is_finished, metric_spec, number, numbers, records
from smoe.workbench.tasks import available_tasks, get_task

UNDERTRAINED = 0.25  # a metric within this fraction of the trivial model's has barely trained
TRIVIAL_NAMES = {"unigram_perplexity": "the unigram model", "chance_accuracy": "always answering the majority class",
                 "mean_image_sse": "the mean image"}


def trivial_key(results: Mapping) -> str | None:
    """The `final` key holding the trivial model's metric for the results' task; None for an unknown task."""
    task = results.get("task")
    return get_task(task).trivial_key if isinstance(task, str) and task in available_tasks() else None


def undertrained(results: Mapping) -> list[str]:
    """A sentence per entry whose mean metric lies within UNDERTRAINED of the trivial model's (both means over its
    finished seeds with finite values)."""
    key = trivial_key(results)
    if key is None:
        return []
    name, _ = metric_spec(results)
    out = []
    for label, runs in group_runs(results).items():
        done = [run for run in runs if is_finished(run)]
        metric = finite_mean(number(get(run, "final", "metric")) for run in done)
        trivial = finite_mean(number(get(run, "final", key)) for run in done)
        if metric is None or not trivial or abs(metric - trivial) > UNDERTRAINED * abs(trivial):
            continue
        gap = 100 * abs(metric - trivial) / abs(trivial)
        out.append(f"{label} has barely trained: its mean {name} {format_number(metric)} lies within "
                   f"{100 * UNDERTRAINED:g} % of {TRIVIAL_NAMES.get(key, key)} ({format_number(trivial)}; "
                   f"{gap:.0f} % apart). Its verdicts compare models that learned little; train longer before "
                   "reading them.")
    return out


def contention(results: Mapping) -> str | None:
    """A sentence when the costs were measured under contention: several runs at once, or a load average above
    the cores while runs trained; None when the machine block says neither (or was not recorded)."""
    machine = results.get("machine") if isinstance(results.get("machine"), Mapping) else {}
    jobs, cores = machine.get("jobs"), number(machine.get("cores"))
    reasons = []
    if jobs == "cluster":
        reasons.append("the runs trained on a cluster's workers, beside each other")
    elif is_finite(number(jobs)) and number(jobs) > 1:
        reasons.append(f"{jobs} runs trained at once (--jobs {jobs})")
    if is_finite(cores):
        loads = [v for run in results["runs"] if is_finite(v := number(run.get("load_average")))]
        loads += (numbers(machine.get("load_average")) or [])[:1]
        if loads and max(loads) > cores:
            reasons.append(f"the load average reached {format_number(max(loads))} on {cores:g} cores")
    if not reasons:
        return None
    return ("Costs measured under contention: " + "; ".join(reasons) + ". Train times and throughputs here mostly "
            "measure the machine's load, not the routers; time them on a quiet machine with --jobs 1.")


def idle_experts(results: Mapping) -> list[str]:
    """A sentence per (entry, layer) with experts never chosen at all (load 0) or never any token's first choice,
    over the entry's finished seeds that recorded routing."""
    out = []
    for label, runs in group_runs(results).items():
        seen: dict[tuple[int, str], dict[int, list[str]]] = {}  # (layer, kind) -> expert -> seeds
        recorded = 0
        for run in (r for r in runs if is_finished(r)):
            layers = records(run, "routing", "layers")
            recorded += bool(layers)
            for position, layer in enumerate(layers):
                index = number(layer.get("layer"))
                index = int(index) if is_finite(index) else position
                load, first = numbers(layer.get("load")) or [], numbers(layer.get("first_choice")) or []
                never = {e for e, share in enumerate(load) if share == 0}
                never_first = {e for e, share in enumerate(first) if share == 0} - never
                for kind, experts in (("never chosen", never), ("never chosen first", never_first)):
                    for expert in sorted(experts):
                        seen.setdefault((index, kind), {}).setdefault(expert, []).append(str(run.get("seed", "?")))
        for (index, kind), experts in sorted(seen.items()):
            parts = [f"expert {e} (seed{'s' if len(s) > 1 else ''} {', '.join(s)})" for e, s in experts.items()]
            out.append(f"{label}, layer {index}: {', '.join(parts)} {kind} by any token of the probe set "
                       f"({recorded} seed{'s' if recorded != 1 else ''} recorded routing).")
    return out


def diverged(results: Mapping) -> list[str]:
    """A sentence per run that failed or ended with a headline metric that is not a finite number."""
    name, _ = metric_spec(results)
    out = []
    for run in results["runs"]:
        label, seed = run.get("label") or run.get("router") or "?", run.get("seed", "?")
        metric = number(get(run, "final", "metric"))
        if run.get("status") == "failed":
            error = " ".join(str(run.get("error") or "").split())[:160]
            out.append(f"{label} seed {seed} failed ({error or 'no error recorded'}); a verdict counts it against "
                       f"{label}.")
        elif is_finished(run) and metric is not None and not is_finite(metric):
            out.append(f"{label} seed {seed} diverged (final {name} is not a finite number); a verdict counts it "
                       f"against {label}.")
    return out


def caveats(results: Mapping) -> list[str]:
    """Every warning of the module docstring, most serious first."""
    note = contention(results)
    return [*diverged(results), *undertrained(results), *idle_experts(results), *([note] if note else [])]
