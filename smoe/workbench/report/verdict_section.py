"""The opening section of a comparison report: verdicts against the baseline (`workbench.results.verdicts`).

A table for the headline metric (entry, seeds, mean difference with its 95 % interval, Holm-adjusted p and the test,
verdict, minimum detectable difference, seeds needed), the same for the strongest corruption, a compact table of the
routing columns' verdicts, a forest plot of the first two, and which noise dominates the headline metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from smoe.workbench.document import Block, Heading, Image, Table, Text
from smoe.workbench.numbers import format_number
from smoe.workbench.report.forest import forest
from smoe.workbench.report.plots import save_figure
from smoe.workbench.results.columns import column_title
from smoe.workbench.results.schema import metric_spec
from smoe.workbench.results.verdicts import strongest_corruption

FOREST_FILE = "plots/forest.png"
NOT_PAIRED = "no seed paired with the baseline"
DIRECTION = {True: "higher is better", False: "lower is better", None: "no better side"}


def _interval(c: Mapping) -> str:
    if c.get("ci_low") is None:
        return f"{format_number(c.get('mean'), True)} (n={c.get('n')}: no interval)"
    low, high = format_number(c["ci_low"], True), format_number(c["ci_high"], True)
    return f"{format_number(c['mean'], True)} [{low}, {high}]"


def _seeds_needed(c: Mapping) -> str:
    if c.get("seeds_needed") is not None:
        return str(c["seeds_needed"])
    return "n/a" if not c.get("mean") or c.get("sd") is None else "> 1000"


def verdict_table(results: Mapping, key: str) -> Table:
    """One row per entry but the baseline: the comparison of column `key` (entries without one say so)."""
    entries = results["comparisons"].get(key, {})
    header = ["entry", "seeds", f"difference vs {results['baseline']} (95 % CI)", "p (Holm)", "verdict",
              "MDD (80 % power)", "seeds needed"]
    body = []
    for label in results["entries"]:
        if label == results["baseline"]:
            continue
        c = entries.get(label)
        if c is None:
            body.append([label, "0", NOT_PAIRED, "", "not resolved", "", ""])
            continue
        body.append([label, str(c["n"]), _interval(c), f"{format_number(c['p_adjusted'])} ({c['test']})", c["verdict"],
                     format_number(c.get("mdd")), _seeds_needed(c)])
    return Table(header, body)


STOPS = {"decided": "decided", "max seeds": "max seeds reached", "budget": "budget spent",
         "diverged": "a run diverged or failed", "zero variance": "zero variance"}


def sequential_blocks(results: Mapping) -> list[Block]:
    """How a sequential comparison (`--seeds auto`) stopped: per entry its seeds, looks, stop reason and verdict
    with the repeated confidence interval; nothing for a fixed-seed comparison."""
    seq = results.get("sequential")
    if not seq:
        return []
    budget = "" if seq.get("budget_s") is None else (
        f"; budget {seq['budget_s'] / 3600:.2f} h of training, {seq['spent_s'] / 3600:.2f} h spent")
    text = (f"Seeds until the answer is known: the headline verdicts above are the group-sequential rule's (looks at "
            f"{', '.join(map(str, seq['looks']))} seeds, alpha {seq['alpha']:g} over {seq['family']} entries, "
            f"{seq['spending']} spending{'' if seq.get('margin') is None else ', margin ' + seq['margin']}{budget}); "
            "their intervals are repeated confidence intervals, which hold at every look together, and there is no "
            "fixed-seed p-value. Details: docs/metrics.md.")
    body = [[label, str(e["seeds"]), " ".join(str(look["n"]) for look in e["looks"]),
             STOPS.get(e["stop"], str(e["stop"])), e["verdict"],
             f"[{format_number(e['ci_low'], True)}, {format_number(e['ci_high'], True)}]"]
            for label, e in seq["entries"].items()]
    return [Text(text), Table(["entry", "seeds used", "looks (seeds)", "stopped", "verdict", "repeated CI"], body)]


def routing_verdicts(results: Mapping) -> Table | None:
    """Routing columns x entries: "verdict (mean difference)"; None without routing comparisons."""
    name, higher_is_better = metric_spec(results)
    keys = [k for k in results["comparisons"] if k != "final.metric" and not k.startswith("robust.")]
    if not keys:
        return None
    labels = [label for label in results["entries"] if label != results["baseline"]]
    body = [[column_title(k, name, higher_is_better),
             *(f"{c['verdict']} ({format_number(c['mean'], True)})" if (c := results["comparisons"][k].get(label))
               else "no paired seed" for label in labels)] for k in keys]
    return Table(["routing column", *labels], body)


def _noise_text(results: Mapping) -> str:
    n = results.get("noise") or {}
    parts = []
    if n.get("eval_sd") is not None:
        parts.append(f"evaluation sd {format_number(n['eval_sd'])} (bootstrap over the test samples of one run, "
                     "root mean square over runs)")
    if n.get("seed_sd") is not None:
        parts.append(f"seed sd {format_number(n['seed_sd'])} (over the seeds of one entry, pooled over entries)")
    if not parts:
        return ""
    text = "Noise of the headline metric: " + "; ".join(parts) + "."
    if n.get("dominant") == "seed":
        return text + " Seed noise dominates: more seeds narrow the intervals."
    if n.get("dominant") == "evaluation":
        return text + (" Evaluation noise dominates: every entry is scored on the same samples, so it largely cancels "
                       "in the paired differences, but a larger test split would make each number more precise.")
    return text


def _remove(path: Path) -> None:
    """A forest plot of an earlier rendering must not survive: the PNG and its PDF."""
    for stale in (path, path.with_suffix(".pdf")):
        stale.unlink(missing_ok=True)


def verdict_blocks(results: Mapping, out: Path, vector: bool = True) -> list[Block]:
    """The section, from results with statistics (`verdicts.with_statistics`); draws out/plots/forest.png (and
    forest.pdf with vector; both removed when there is nothing to draw)."""
    name, higher_is_better = metric_spec(results)
    baseline, path = results["baseline"], out / FOREST_FILE
    if len(results["entries"]) < 2:
        _remove(path)
        return [Heading("Verdicts"), Text("Fewer than two entries: nothing to compare.")]
    method = (f"Each entry minus {baseline}, paired by seed (same batches, evaluation samples and initial values of "
              "the shared parameters); mean over the seeds both finished, 95 % Student-t interval, p of the exact "
              "sign-flip test where the seeds allow it (6 or more) else of the paired t-test, Holm-adjusted over the "
              "entries; better / worse only when that p is below 0.05, else not resolved (which is not evidence of no "
              "difference). MDD: the smallest difference these seeds detect with 80 % power; seeds needed: to "
              "detect the observed difference.")
    blocks: list[Block] = [Heading(f"Verdicts against {baseline}"), Text(f"{method} {_noise_text(results)}".strip())]
    metric_title = f"{name} ({DIRECTION[higher_is_better]})"
    blocks += [Heading(metric_title, 3), verdict_table(results, "final.metric"), *sequential_blocks(results)]
    panels = [(metric_title, results["comparisons"].get("final.metric", {}))]
    corruption = strongest_corruption(results, baseline)
    if corruption is not None:
        title = f"{column_title(corruption, name, higher_is_better)} ({DIRECTION[higher_is_better]})"
        blocks += [Heading(f"Strongest corruption: {title}", 3), verdict_table(results, corruption)]
        panels.append((title, results["comparisons"].get(corruption, {})))
    routing = routing_verdicts(results)
    if routing is not None:
        blocks += [Heading("Routing columns", 3),
                   Text("Verdict (mean difference vs the baseline) per routing column; load CV, max/mean load, dropped "
                        "fraction and fluctuation are lower-is-better (better / worse), the others have no better "
                        "side (higher / lower)."), routing]
    fig = forest(panels, baseline)
    if fig is None:
        _remove(path)
        return blocks
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, vector=vector)
    return [*blocks, Image(Path(FOREST_FILE), f"Difference vs {baseline} with its 95 % interval, one row per entry; "
                                             "green better, red worse, grey not resolved.")]
