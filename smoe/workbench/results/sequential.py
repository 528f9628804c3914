"""The headline verdicts of a sequential comparison (`smoe compare --seeds auto`): results.json's "sequential"
section (`smoe.workbench.grid.sequential`) replaces the fixed-seed statistics of the headline column for each
entry it judged, so the report prints the sequential rule's verdict and its repeated confidence interval (a fixed-n
p-value would not hold its level after seeds were added on looking: PITFALLS 17)."""

from __future__ import annotations

from collections.abc import Mapping

RULE = "group-sequential"


def apply_sequential(results: Mapping) -> dict:
    """results with comparisons["final.metric"][label] taken from sequential["entries"][label]: the seeds of its last
    look (0..n-1), their differences, mean and sd, the verdict and its interval (at level alpha / entries, holding
    over every look); no p-value, MDD or seeds needed (the rule has none at a fixed n). Unchanged without a
    "sequential" section."""
    section = results.get("sequential")
    headline = (results.get("comparisons") or {}).get("final.metric")
    if not section or not headline:
        return dict(results)
    column = {}
    for label, c in headline.items():
        e = section["entries"].get(label)
        if e is None:
            column[label] = c
            continue
        keep = [i for i, s in enumerate(c.get("seeds") or []) if s < e["seeds"]]
        differences = [c["differences"][i] for i in keep]
        last = e["looks"][-1]
        column[label] = {**c, "n": len(keep), "seeds": [c["seeds"][i] for i in keep], "differences": differences,
                         "mean": last["mean"], "sd": last["sd"], "ci_low": e["ci_low"], "ci_high": e["ci_high"],
                         "verdict": e["verdict"], "test": RULE, "p_value": None, "p_adjusted": None, "mdd": None,
                         "seeds_needed": None, "level": section["alpha"] / section["family"],
                         "adjustment": "bonferroni", "family_size": section["family"], "stop": e["stop"],
                         "note": f"stopped: {e['stop']}"}
    return {**results, "comparisons": {**results["comparisons"], "final.metric": column}}
