"""The first screen of a comparison report, read from the results' verdicts (`workbench.results.verdicts`; nothing
is judged here):

- `bottom_line`: one sentence per entry ("xmoe: 3.1 % lower perplexity than topk [1.2, 5.0], better, 5 seeds"): the
  mean paired difference in % of the baseline's mean over the paired seeds (the recorded `relative`), with the
  verdict's interval rescaled alike;
- `verdict_blocks`: a table per column of the headline family (the headline metric and the strongest corruption:
  entry, seeds, difference and its interval at the judged level, adjusted p and the test, verdict, d_z, probability
  of improvement, MDD, seeds needed) under a heading that names the units, the interval's level, the adjustment and
  the margin; compact tables of the other corruptions and of the routing columns, each family's rule stated; the
  method and the noise in a collapsed paragraph; a forest plot of the headline family.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from smoe.workbench.document import Block, Bullets, Details, Heading, Image, Table, Text
from smoe.workbench.numbers import format_number, is_finite
from smoe.workbench.report.forest import forest
from smoe.workbench.report.plots import save_or_remove
from smoe.workbench.results.columns import column_title
from smoe.workbench.results.schema import metric_spec, number

FOREST_FILE = "plots/forest.png"
HEADLINE = "final.metric"
NOT_PAIRED = "no seed paired with the baseline"
DIRECTION = {True: "higher is better", False: "lower is better", None: "no better side"}

# ---------------------------------------------------------------- the bottom line


def confidence(c: Mapping) -> str:
    """The interval's confidence: 1 - the level the verdict was judged at ("98.33 %"); "95 %" for a version-2
    comparison, which records no level."""
    level = number(c.get("level"))
    return f"{100 * (1 - level):.4g} %" if is_finite(level) else "95 %"


def relative(c: Mapping) -> tuple[float, float | None, float | None] | None:
    """(mean, low, high) of comparison c in % of the baseline's mean over the paired seeds: the recorded `relative`,
    with the interval scaled alike; None when it is not recorded (a baseline mean of 0) or the mean is 0 (no
    scale to carry over)."""
    mean, rel = number(c.get("mean")), number(c.get("relative"))
    if not (is_finite(mean) and is_finite(rel)) or mean == 0:
        return None
    scale = rel / mean
    low, high = (number(c.get(k)) for k in ("ci_low", "ci_high"))
    return rel, low * scale if is_finite(low) else None, high * scale if is_finite(high) else None


def sentence(results: Mapping, label: str, key: str = HEADLINE) -> str:
    """One entry's bottom line on column `key`: size and side of the difference, its interval, verdict, seeds."""
    name, _ = metric_spec(results)
    baseline = results["baseline"]
    c = results["comparisons"].get(key, {}).get(label)
    if c is None:
        return f"{label}: no seed paired with {baseline}, so no verdict."
    scaled = relative(c)
    if scaled is not None:
        (value, low, high), show, unit = scaled, (lambda x: f"{x:.1f}"), " %"
    else:
        value, low, high = number(c.get("mean")), number(c.get("ci_low")), number(c.get("ci_high"))
        show, unit = format_number, ""
    diverged = len(c.get("diverged_seeds") or c.get("diverged") or [])
    if value is None or not is_finite(value):
        return (f"{label}: no finite paired difference with {baseline} ({c['verdict']}; {diverged} seed(s) "
                "diverged or failed).")
    word = "higher" if value >= 0 else "lower"
    if value < 0:
        value, low, high = -value, None if high is None else -high, None if low is None else -low
    interval = f" [{show(low)}, {show(high)}]" if low is not None and high is not None else " (no interval)"
    margin = ""
    if is_finite(number(c.get("margin"))):
        margin = f" within a margin of ±{c.get('margin_spec') or format_number(c['margin'])}"
    seeds = f"{c.get('n')} seed{'s' if c.get('n') != 1 else ''}" + (f", {diverged} diverged" if diverged else "")
    return f"{label}: {show(value)}{unit} {word} {name} than {baseline}{interval}, {c['verdict']}{margin}, {seeds}."


def bottom_line(results: Mapping) -> list[Block]:
    """The sentences of every entry but the baseline and what their numbers are; [] with fewer than two entries."""
    labels = [label for label in results["entries"] if label != results["baseline"]]
    if not labels:
        return []
    compared = list(results["comparisons"].get(HEADLINE, {}).values())
    levels = sorted({confidence(c) for c in compared}) or ["95 %"]
    return [Text(f"Bottom line on the test {metric_spec(results)[0]}, each entry against {results['baseline']} "
                 f"paired by seed: the mean difference in % of {results['baseline']}'s mean over the paired seeds, "
                 f"its interval ({' / '.join(levels)}, the level each verdict is judged at) on the same scale, the "
                 "verdict and the seeds it rests on."),
            Bullets([sentence(results, label) for label in labels])]


# ---------------------------------------------------------------- the tables


def units(results: Mapping, key: str) -> str:
    """A verdict table's heading: the column and its good side, the difference's units, the interval's level, the
    adjustment and the margin."""
    name, higher_is_better = metric_spec(results)
    compared = list(results["comparisons"].get(key, {}).values())
    title = name if key == HEADLINE else column_title(key, name, None)
    levels = sorted({confidence(c) for c in compared})
    level = levels[0] if len(levels) == 1 else "each verdict's level"
    adjusted = ", ".join(sorted({str(c["adjustment"]).capitalize() for c in compared if c.get("adjustment")})) or "Holm"
    margins = sorted({c.get("margin_spec") or format_number(c["margin"]) for c in compared
                      if is_finite(number(c.get("margin")))})
    margin = f"margin ±{', '.join(margins)}" if margins else "no margin"
    return (f"{title} ({DIRECTION[higher_is_better]}): entry - {results['baseline']} in {title}, intervals at "
            f"{level}, p {adjusted}-adjusted, {margin}")


def _difference(c: Mapping) -> str:
    relative = c.get("relative")
    return format_number(c.get("mean"), signed=True) + ("" if relative is None else f" ({relative:+.1f} %)")


def _interval(c: Mapping, level: bool) -> str:
    """ "[low, high]", with its confidence when `level`; "unbounded" without a verdict's interval."""
    if c.get("ci_low") is None or c.get("ci_high") is None:
        return "unbounded"
    return f"[{format_number(c['ci_low'], True)}, {format_number(c['ci_high'], True)}]" + (
        f" ({confidence(c)})" if level else "")


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
    levels = {confidence(c) for c in entries.values()}
    shared = next(iter(levels)) if len(levels) == 1 else None  # one level: said once, in the header
    header = ["entry", "seeds", f"difference vs {results['baseline']}", f"interval ({shared or 'confidence'})",
              "p adjusted (test)", "verdict", "d_z", "P(improvement) [95 %]", "MDD (80 %)", "seeds needed"]
    body = []
    for label in results["entries"]:
        if label == results["baseline"]:
            continue
        c = entries.get(label)
        if c is None:
            body.append([label, "0", NOT_PAIRED, "", "", "not resolved", "", "", "", ""])
            continue
        body.append([label, _seeds(c), _difference(c), _interval(c, shared is None),
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


def verdict_blocks(results: Mapping, out: Path, vector: bool = True) -> list[Block]:
    """The verdict tables, the method (collapsed) and the forest plot, from results with statistics
    (`verdicts.with_statistics`); draws out/plots/forest.png (and forest.pdf with vector; both removed when there
    is nothing to draw)."""
    name, higher_is_better = metric_spec(results)
    baseline, path = results["baseline"], out / FOREST_FILE
    if len(results["entries"]) < 2:
        save_or_remove(None, path)
        return [Heading("Verdicts"), Text("Fewer than two entries: nothing to compare.")]
    families = results.get("families") or {}
    blocks: list[Block] = [Heading(f"Verdicts against {baseline}")]
    panels = []
    for key in (families.get("headline") or {}).get("columns", [HEADLINE]):
        heading = units(results, key) if key == HEADLINE else f"Strongest corruption: {units(results, key)}"
        blocks += [Heading(heading, 3), verdict_table(results, key)]
        title = name if key == HEADLINE else column_title(key, name, higher_is_better)
        panels.append((f"{title} ({DIRECTION[higher_is_better]})", results["comparisons"].get(key, {})))
    blocks += [*sequential_blocks(results), *[t for t in [_family_text(results, "headline")] if t]]
    for family, heading, note in (
            ("robustness", "Other corruptions", "Verdict (mean difference vs the baseline, in the metric's units) "
             "per corruption column."),
            ("routing", "Routing columns", "Verdict (mean difference vs the baseline, in each column's units) per "
             "routing column; load CV, max/mean load, dropped fraction and fluctuation are lower-is-better (better "
             "/ worse), the others have no better side (higher / lower).")):
        keys = (families.get(family) or {}).get("columns", [])
        if keys:
            blocks += [Heading(heading, 3), Text(note), compact_verdicts(results, keys),
                       *[t for t in [_family_text(results, family)] if t]]
    blocks.append(Details("Method: how the verdicts are reached",
                          f"{method_text(results)} {_noise_text(results)}".strip()))
    if save_or_remove(forest(panels, baseline), path, vector):
        blocks.append(Image(Path(FOREST_FILE), f"Difference vs {baseline} with its interval at the level it was "
                                               "judged at, one row per entry; green better, red worse, purple "
                                               "equivalent, olive non-inferior, orange non-superior, grey not "
                                               "resolved; dashed: the margin."))
    return blocks
