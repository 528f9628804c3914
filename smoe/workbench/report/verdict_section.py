"""The opening section of a comparison report: verdicts against the baseline, read from the results' statistics
(`workbench.results.verdicts`; nothing is computed here).

The rule in a paragraph, the noise of the headline metric, a table per column of the headline family (the headline
metric and the strongest corruption: entry, seeds, difference and its interval at the judged level, adjusted p and
the test, verdict, d_z, probability of improvement, MDD, seeds needed), compact tables of the other corruptions and
of the routing columns, each family's rule stated, and a forest plot of the headline family.
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

FOREST_FILE = "plots/forest.png"
NOT_PAIRED = "no seed paired with the baseline"
DIRECTION = {True: "higher is better", False: "lower is better", None: "no better side"}


def _difference(c: Mapping) -> str:
    relative = c.get("relative")
    return format_number(c.get("mean"), signed=True) + ("" if relative is None else f" ({relative:+.1f} %)")


def _interval(c: Mapping) -> str:
    if c.get("ci_low") is None or c.get("ci_high") is None:
        return "unbounded"
    confidence = 100 * (1 - c["level"])
    return f"[{format_number(c['ci_low'], True)}, {format_number(c['ci_high'], True)}] ({confidence:.4g} %)"


def _seeds(c: Mapping) -> str:
    out = str(c["n"])
    if c.get("diverged_seeds"):
        out += f", diverged {len(c['diverged_seeds'])}"
    if c.get("baseline_diverged_seeds"):
        out += f", baseline diverged {len(c['baseline_diverged_seeds'])}"
    return out


def _verdict(c: Mapping) -> str:
    return c["verdict"] + (f" ({c['note']})" if c.get("note") else "")


def _improvement(c: Mapping) -> str:
    if c.get("prob_improvement") is None:
        return "n/a"
    return f"{c['prob_improvement']:.2f} [{c['prob_improvement_low']:.2f}, {c['prob_improvement_high']:.2f}]"


def _seeds_needed(c: Mapping) -> str:
    if c.get("test") == "group-sequential":  # the sequential rule adds seeds itself
        return "n/a"
    if c.get("seeds_needed") is not None:
        return str(c["seeds_needed"])
    return "n/a" if c.get("sd") is None else "> 1000"


def verdict_table(results: Mapping, key: str) -> Table:
    """One row per entry but the baseline: its verdict on column `key` (entries without one say so)."""
    entries = results["comparisons"].get(key, {})
    header = ["entry", "seeds", f"difference vs {results['baseline']}", "interval (confidence)", "p adjusted (test)",
              "verdict", "d_z", "P(improvement) [95 %]", "MDD (80 %)", "seeds needed"]
    body = []
    for label in results["entries"]:
        if label == results["baseline"]:
            continue
        c = entries.get(label)
        if c is None:
            body.append([label, "0", NOT_PAIRED, "", "", "not resolved", "", "", "", ""])
            continue
        body.append([label, _seeds(c), _difference(c), _interval(c),
                     f"{format_number(c['p_adjusted'])} ({c['test']})", _verdict(c), format_number(c.get("d_z")),
                     _improvement(c), format_number(c.get("mdd")), _seeds_needed(c)])
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
            f"{', '.join(map(str, seq['looks']))} seeds, alpha {seq['alpha']:g} over {seq['family']} "
            f"{'entry' if seq['family'] == 1 else 'entries'}, "
            f"{seq['spending']} spending{'' if seq.get('margin') is None else ', margin ' + seq['margin']}{budget}); "
            "their intervals are repeated confidence intervals, which hold at every look together, and there is no "
            "fixed-seed p-value. Details: docs/metrics.md.")
    body = [[label, str(e["seeds"]), " ".join(str(look["n"]) for look in e["looks"]),
             STOPS.get(e["stop"], str(e["stop"])), e["verdict"],
             f"[{format_number(e['ci_low'], True)}, {format_number(e['ci_high'], True)}]"]
            for label, e in seq["entries"].items()]
    return [Text(text), Table(["entry", "seeds used", "looks (seeds)", "stopped", "verdict", "repeated CI"], body)]


def compact_verdicts(results: Mapping, keys: list[str]) -> Table:
    """Columns x entries: "verdict (mean difference)"."""
    name, higher_is_better = metric_spec(results)
    labels = [label for label in results["entries"] if label != results["baseline"]]
    body = [[column_title(k, name, higher_is_better),
             *(f"{c['verdict']} ({format_number(c['mean'], True)})" if (c := results["comparisons"][k].get(label))
               else "no paired seed" for label in labels)] for k in keys]
    return Table(["column", *labels], body)


def method_text(results: Mapping) -> str:
    """The rule, in a paragraph."""
    margin = results.get("margin")
    margin_text = (f" With the margin {margin} (of the baseline's mean where given in %): equivalent when the "
                   "interval lies inside plus or minus the margin (two one-sided tests), non-inferior / non-superior "
                   "when its lower / upper bound clears it on the bad / good side." if margin else
                   " No margin was given, so equality cannot be shown (smoe report DIR --margin 2% adds one).")
    return (f"Each entry minus {results['baseline']}, paired by seed (same batches, evaluation samples and initial "
            "values of the shared parameters). Every entry gets one interval for its mean difference over seeds: the "
            "paired t-test's, or the exact sign-flip test's where its permutation distribution is fine enough at "
            f"the level, at confidence 1 - {results.get('alpha', 0.05):g}/m (Bonferroni over the m members of its "
            "family, stated under each table), so the intervals of a family hold together with probability at least "
            f"{100 * (1 - results.get('alpha', 0.05)):g} % and every verdict is read from its interval: better / "
            f"worse when it excludes 0.{margin_text} Otherwise not resolved: no evidence either way at these seeds; "
            "the MDD is the smallest difference this rule resolves with 80 % power at these seeds and this spread, "
            "seeds needed the seeds at which it would resolve the observed difference. No verdict from fewer than 3 "
            "paired seeds; differences equal up to round-off count as zero variance (p never below the exact floor "
            "2/2^n); a seed where a run diverged or failed stays in the count and rules out the verdicts in that "
            "run's favour. d_z: mean over sd of the differences; P(improvement): the share of seeds where the "
            "entry is better, with a 95 % bootstrap interval over seeds. The rule's error rates are checked by "
            "simulation (docs/metrics.md).")


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
    if n.get("comparable"):
        return text + (" Evaluation noise is comparable to seed noise: every entry is scored on the same samples, so "
                       "much of it cancels in the paired differences, but what remains does not shrink with seeds; "
                       "the verdicts hold for this test split only.")
    if n.get("dominant") == "seed":
        return text + " Seed noise dominates: more seeds narrow the intervals."
    return text


def _family_text(results: Mapping, name: str) -> Text | None:
    family = (results.get("families") or {}).get(name)
    return None if family is None else Text(f"Family {name}: {family['rule']}.")


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
    families = results.get("families") or {}
    blocks: list[Block] = [Heading(f"Verdicts against {baseline}"),
                           Text(f"{method_text(results)} {_noise_text(results)}".strip())]
    panels = []
    for key in (families.get("headline") or {}).get("columns", ["final.metric"]):
        title = f"{name if key == 'final.metric' else column_title(key, name, higher_is_better)} " \
                f"({DIRECTION[higher_is_better]})"
        if key != "final.metric":
            title = f"Strongest corruption: {title}"
        blocks += [Heading(title, 3), verdict_table(results, key)]
        panels.append((title, results["comparisons"].get(key, {})))
    blocks += [*sequential_blocks(results), *[t for t in [_family_text(results, "headline")] if t]]
    for family, heading, note in (
            ("robustness", "Other corruptions", "Verdict (mean difference vs the baseline) per corruption column."),
            ("routing", "Routing columns", "Verdict (mean difference vs the baseline) per routing column; load CV, "
             "max/mean load, dropped fraction and fluctuation are lower-is-better (better / worse), the others have "
             "no better side (higher / lower).")):
        keys = (families.get(family) or {}).get("columns", [])
        if keys:
            blocks += [Heading(heading, 3), Text(note), compact_verdicts(results, keys),
                       *[t for t in [_family_text(results, family)] if t]]
    fig = forest(panels, baseline)
    if fig is None:
        _remove(path)
        return blocks
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, vector=vector)
    return [*blocks, Image(Path(FOREST_FILE), f"Difference vs {baseline} with its interval at the level it was "
                                             "judged at, one row per entry; green better, red worse, purple "
                                             "equivalent, olive non-inferior, orange non-superior, grey not "
                                             "resolved; dashed: the margin.")]
