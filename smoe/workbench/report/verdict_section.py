"""The first screen of a comparison report, from the verdicts against the baseline (`workbench.results.verdicts`):

- `bottom_line`: one sentence per entry ("xmoe: 3.1 % lower perplexity than topk [1.2, 5.0], better, 5 seeds"): the
  mean paired difference in % of the baseline's mean over the paired seeds, with the verdict's interval on the same
  scale;
- `verdict_blocks`: a table for the headline metric (entry, seeds, difference with its interval, relative difference,
  adjusted p and the test, verdict, minimum detectable difference, seeds needed), the same for the strongest
  corruption, a compact table of the routing columns' verdicts, each under a heading that names the units, the
  interval's level and the margin; the method in a collapsed paragraph; a forest plot.

Every number is read from the recorded comparison; only the rescaling to % of the baseline is done here.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

from smoe.workbench.document import Block, Bullets, Details, Heading, Image, Table, Text
from smoe.workbench.numbers import format_number, is_finite
from smoe.workbench.report.forest import forest
from smoe.workbench.report.plots import save_or_remove
from smoe.workbench.results.columns import column_title
from smoe.workbench.results.schema import metric_spec, number
from smoe.workbench.results.verdicts import seed_values, strongest_corruption

FOREST_FILE = "plots/forest.png"
HEADLINE = "final.metric"
NOT_PAIRED = "no seed paired with the baseline"
DIRECTION = {True: "higher is better", False: "lower is better", None: "no better side"}
ADJUSTMENT = {"holm": "Holm", "bonferroni": "Bonferroni", "bh": "Benjamini-Hochberg", "none": "no adjustment"}


def confidence(c: Mapping) -> str:
    """The interval's confidence: "95 %", or 1 - the level the verdict was judged at ("97.5 %")."""
    level = number(c.get("level"))
    return f"{100 * (1 - level):.4g} %" if is_finite(level) else "95 %"


def baseline_mean(results: Mapping, key: str, c: Mapping) -> float | None:
    """The baseline's mean of column `key` over the seeds paired in comparison c (all its finite seeds when c does
    not list them); None when there is none."""
    runs = seed_values(results).get(results["baseline"], {})
    seeds = c.get("seeds") if isinstance(c.get("seeds"), list) else list(runs)
    values = [v for s in seeds if is_finite(v := runs.get(s, {}).get(key))]
    return statistics.fmean(values) if values else None


def relative(results: Mapping, key: str, c: Mapping) -> tuple[float, float | None, float | None] | None:
    """(mean, low, high) of comparison c in % of the baseline's mean over the paired seeds (the recorded `relative`
    when there is one, the interval scaled alike); None when the baseline's mean is 0 or unknown."""
    mean, low, high = (number(c.get(k)) for k in ("mean", "ci_low", "ci_high"))
    if not is_finite(mean):
        return None
    recorded = number(c.get("relative"))
    if is_finite(recorded) and mean != 0:
        scale = recorded / mean
    else:
        base = baseline_mean(results, key, c)
        if not base:
            return None
        scale = 100 / abs(base)
    bounds = [x * scale if is_finite(x) else None for x in (low, high)]
    return mean * scale, bounds[0], bounds[1]


def _percent(x: float) -> str:
    return f"{x:.1f}"


def sentence(results: Mapping, label: str, key: str = HEADLINE) -> str:
    """One entry's bottom line on column `key`: size and side of the difference, its interval, verdict, seeds."""
    name, _ = metric_spec(results)
    baseline = results["baseline"]
    c = results["comparisons"].get(key, {}).get(label)
    if c is None:
        return f"{label}: no seed paired with {baseline}, so no verdict."
    scaled = relative(results, key, c)
    if scaled is not None:
        value, low, high = scaled
        show, unit = _percent, " %"
    else:
        value, low, high = number(c.get("mean")), number(c.get("ci_low")), number(c.get("ci_high"))
        show, unit = format_number, ""
    word = "higher" if value >= 0 else "lower"
    if value < 0:
        value, low, high = -value, None if high is None else -high, None if low is None else -low
    interval = f" [{show(low)}, {show(high)}]" if low is not None and high is not None else " (no interval)"
    margin = ""
    if is_finite(number(c.get("margin"))):
        margin = f" within a margin of ±{c.get('margin_spec') or format_number(c['margin'])}"
    diverged = len(c.get("diverged") or [])
    seeds = f"{c.get('n')} seed{'s' if c.get('n') != 1 else ''}" + (f", {diverged} diverged" if diverged else "")
    return f"{label}: {show(value)}{unit} {word} {name} than {baseline}{interval}, {c['verdict']}{margin}, {seeds}."


def bottom_line(results: Mapping) -> list[Block]:
    """The sentences of every entry but the baseline and what their numbers are; [] with fewer than two entries."""
    labels = [label for label in results["entries"] if label != results["baseline"]]
    if not labels:
        return []
    compared = list(results["comparisons"].get(HEADLINE, {}).values())
    level = confidence(compared[0]) if compared else "95 %"
    return [Text(f"Bottom line on the test {metric_spec(results)[0]}, each entry against {results['baseline']} "
                 f"paired by seed: the mean difference in % of {results['baseline']}'s mean over the paired seeds, "
                 f"its {level} interval on the same scale, the verdict and the seeds it rests on."),
            Bullets([sentence(results, label) for label in labels])]


def units(results: Mapping, key: str) -> str:
    """What a verdict table's numbers are: the difference's units, the interval, the adjustment and the margin."""
    name, higher_is_better = metric_spec(results)
    compared = list(results["comparisons"].get(key, {}).values())
    first = compared[0] if compared else {}
    title = column_title(key, name, None) if key != HEADLINE else name
    adjustment = ADJUSTMENT.get(first.get("adjustment"), "Holm")
    margins = {c.get("margin_spec") or format_number(c["margin"]) for c in compared
               if is_finite(number(c.get("margin")))}
    margin = f"margin ±{', '.join(sorted(margins))}" if margins else "no margin set"
    return (f"{title} ({DIRECTION[higher_is_better if key == HEADLINE or key.startswith('robust.') else None]}): "
            f"entry - {results['baseline']} in {title}, {confidence(first)} intervals, p {adjustment}-adjusted, "
            f"{margin}")


def _interval(c: Mapping) -> str:
    if c.get("ci_low") is None or c.get("ci_high") is None:
        return f"{format_number(c.get('mean'), True)} (n={c.get('n')}: no interval)"
    low, high = format_number(c["ci_low"], True), format_number(c["ci_high"], True)
    return f"{format_number(c['mean'], True)} [{low}, {high}]"


def _seeds_needed(c: Mapping) -> str:
    if c.get("seeds_needed") is not None:
        return str(c["seeds_needed"])
    return "n/a" if not c.get("mean") or c.get("sd") is None else "> 1000"


def verdict_rows(results: Mapping, key: str) -> tuple[list[str], list[list[str]]]:
    """Header and one row per entry but the baseline of column `key` (entries without a paired seed say so)."""
    entries = results["comparisons"].get(key, {})
    baseline = results["baseline"]
    header = ["entry", "seeds", "difference [interval]", f"% of {baseline}", "p adjusted (test)", "verdict",
              "MDD (80 % power)", "seeds needed"]
    body = []
    for label in results["entries"]:
        if label == baseline:
            continue
        c = entries.get(label)
        if c is None:
            body.append([label, "0", NOT_PAIRED, "", "", "not resolved", "", ""])
            continue
        scaled = relative(results, key, c)
        rel = "" if scaled is None else f"{scaled[0]:+.1f}" + (
            f" [{scaled[1]:+.1f}, {scaled[2]:+.1f}]" if scaled[1] is not None and scaled[2] is not None else "")
        body.append([label, str(c["n"]), _interval(c), rel, f"{format_number(c['p_adjusted'])} ({c['test']})",
                     c["verdict"], format_number(c.get("mdd")), _seeds_needed(c)])
    return header, body


def verdict_table(results: Mapping, key: str) -> Table:
    return Table(*verdict_rows(results, key))


def routing_verdicts(results: Mapping) -> Table | None:
    """Routing columns x entries: "verdict (mean difference)"; None without routing comparisons."""
    name, higher_is_better = metric_spec(results)
    keys = [k for k in results["comparisons"] if k != HEADLINE and not k.startswith("robust.")]
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


def method(results: Mapping) -> str:
    """How the verdicts were reached, from what the comparisons record: the rule's family, adjustment and level
    when recorded (schema 3), else the version-2 rule (paired t or exact sign-flip, Holm, 95 % intervals)."""
    compared = list(results["comparisons"].get(HEADLINE, {}).values())
    first = compared[0] if compared else {}
    paired = (f"Each entry minus {results['baseline']}, paired by seed (same batches, evaluation samples and initial "
              "values of the shared parameters); mean over the seeds both finished; p of the exact sign-flip test "
              "where the seeds allow it, else of the paired t-test")
    power = ("MDD: the smallest difference these seeds detect with 80 % power; seeds needed: to detect the observed "
             "difference.")
    if "level" in first:
        adjustment = ADJUSTMENT.get(first.get("adjustment"), str(first.get("adjustment")))
        text = (f"{paired}, {adjustment}-adjusted over the family {first.get('family')} of "
                f"{first.get('family_size')}; the interval is the test's at the level each verdict is judged at, so "
                "a verdict and its interval never disagree: better / worse when it excludes 0, equivalent / "
                "non-inferior / non-superior against the margin when one is set, else not resolved (which is not "
                f"evidence of no difference). A diverged seed counts against its entry. {power}")
    else:
        text = (f"{paired}, Holm-adjusted over the entries; 95 % Student-t interval; better / worse only when that p "
                f"is below 0.05, else not resolved (which is not evidence of no difference). {power}")
    return f"{text} {_noise_text(results)}".strip()


def verdict_blocks(results: Mapping, out: Path, vector: bool = True) -> list[Block]:
    """The verdict tables, the method (collapsed) and the forest plot, from results with statistics
    (`verdicts.with_statistics`); draws out/plots/forest.png (and .pdf with vector; both removed when there is
    nothing to draw)."""
    name, higher_is_better = metric_spec(results)
    baseline, path = results["baseline"], out / FOREST_FILE
    if len(results["entries"]) < 2:
        save_or_remove(None, path)
        return [Heading("Verdicts"), Text("Fewer than two entries: nothing to compare.")]
    blocks: list[Block] = [Heading(f"Verdicts against {baseline}"), Heading(units(results, HEADLINE), 3),
                           verdict_table(results, HEADLINE)]
    panels = [(f"{name} ({DIRECTION[higher_is_better]})", results["comparisons"].get(HEADLINE, {}))]
    corruption = strongest_corruption(results, baseline)
    if corruption is not None:
        blocks += [Heading(f"Strongest corruption: {units(results, corruption)}", 3),
                   verdict_table(results, corruption)]
        panels.append((f"{column_title(corruption, name, None)} ({DIRECTION[higher_is_better]})",
                       results["comparisons"].get(corruption, {})))
    routing = routing_verdicts(results)
    if routing is not None:
        blocks += [Heading("Routing columns: verdict (mean difference, entry - baseline, in each column's units)", 3),
                   Text("Load CV, max/mean load, dropped fraction and fluctuation are lower-is-better (better / "
                        "worse), the others have no better side (higher / lower)."), routing]
    blocks.append(Details("Method: how the verdicts are reached", method(results)))
    if save_or_remove(forest(panels, baseline), path, vector):
        blocks.append(Image(Path(FOREST_FILE), f"Difference vs {baseline} with its interval, one row per entry; "
                                               "green better, red worse, grey not resolved."))
    return blocks
