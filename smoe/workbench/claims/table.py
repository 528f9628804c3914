"""The verdict table of the registered claims, judged from the committed data (`workbench.claims.data`), and
`smoe claims table`: the table regenerated between the markers CLAIMS_START and CLAIMS_END of docs/results.md.

One row per claim whose comparison has results, judged as one family with every other registered claim that has
results (`claim.judge_claims`: Holm, Benjamini-Hochberg as a second reading; exploratory claims apart): what is
judged (kind and margin), the setting (preset and training steps), the tuned values of the entry and its baseline,
the paired difference with the interval at the level it was judged at, p, the verdict, the family, MDD, the seeds,
and the training time its comparison took (shared by the claims that read it). The region holds nothing that
changes between two regenerations of the same data (no date, no path, no command), so a test can check that the
committed tables equal the regenerated ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from smoe.workbench.claims.claim import CLAIM_VERDICTS, CLAIMS, Claim, Judgment, interval_text, judge_claims
from smoe.workbench.claims.data import DEFAULT_DATA, training_seconds
from smoe.workbench.document import Table, Text, render_markdown
from smoe.workbench.numbers import format_duration, format_number
from smoe.workbench.results.schema import RESULTS_FILE, get, load_results

CLAIMS_START, CLAIMS_END = "<!-- claims-table:start -->", "<!-- claims-table:end -->"
DEFAULT_DOC = "docs/results.md"


def judge_data(data: str | os.PathLike,
               claims: Sequence[Claim] | None = None) -> tuple[list[Judgment], dict[str, dict]]:
    """The judgments of the claims (default: every registered one) whose comparison has data/<comparison>/results.json,
    judged together (`claim.judge_claims`), and those results by comparison."""
    claims = [CLAIMS.get(name) for name in CLAIMS.names()] if claims is None else claims
    results = {name: load_results(Path(data) / name / RESULTS_FILE)
               for name in dict.fromkeys(c.comparison for c in claims) if (Path(data) / name / RESULTS_FILE).is_file()}
    return judge_claims(claims, results), results


def _tuned(claim: Claim, results: Mapping) -> str:
    """'train.lr=1e-3 / train.lr=3e-3': the picks of the entry and its baseline ('' for an untuned comparison)."""
    picks = get(results, "tuning", "picks")
    if not isinstance(picks, Mapping):
        return ""
    labels = [claim.entry] if claim.reference == claim.entry else [claim.entry, claim.reference]
    return " / ".join(", ".join(f"{k}={v}" for k, v in (picks.get(label) or {}).items()) or "none"
                      for label in labels)


def summary_table(judgments: Sequence[Judgment], results: Mapping[str, Mapping]) -> Table:
    """One row per claim (`results`: each comparison's results, for the tuning and the training time)."""
    body = []
    for j in judgments:
        r, bh, comparison = j.result or {}, j.bh or {}, results.get(j.claim.comparison, {})
        rel = r.get("relative")
        verdict = f"**{j.shown}**" if j.verdict in ("supported", "contradicted") else j.shown
        body.append([
            j.claim.name, j.claim.paper, j.claim.describe(), j.setting, _tuned(j.claim, comparison),
            "" if r.get("mean") is None else format_number(r["mean"], True) + (
                "" if rel is None else f" ({rel:+.1f} %)"),
            interval_text(r) if r else "", "" if not r else format_number(r["p_adjusted"]),
            verdict + (f" ({j.note})" if j.note else ""),
            "" if not bh else f"{format_number(bh['p_adjusted'])}: {bh['verdict']}",
            "" if not r else f"{r['family']} ({r['family_size']}, {r['adjustment']})",
            "" if r.get("mdd") is None else format_number(r["mdd"]), str(r.get("n", "")),
            format_duration(training_seconds(comparison)),
        ])
    header = ["claim", "paper", "judged (entry - baseline on column)", "setting", "tuned (entry / baseline)",
              "difference", "interval (confidence)", "p (Holm)", "verdict (Holm)", "p: verdict (BH, FDR)",
              "family (size, adjustment)", "MDD (80 %)", "seeds", "training time"]
    return Table(header, body)


def counts(judgments: Sequence[Judgment]) -> str:
    """'1 supported, 3 contradicted, 20 not resolved'."""
    return ", ".join(f"{sum(j.verdict == v for j in judgments)} {v}" for v in CLAIM_VERDICTS
                     if any(j.verdict == v for j in judgments))


def legend(judgments: Sequence[Judgment]) -> str:
    """How the claims were judged, with the family sizes, and what the other columns mean."""
    confirmatory = sum(not j.claim.exploratory and j.result is not None for j in judgments)
    exploratory = sum(j.claim.exploratory and j.result is not None for j in judgments)
    return (f"The {confirmatory} confirmatory claim(s) judged here are one family: each claim's paired difference "
            "(entry - baseline, per seed; a diverged or failed run counts against its entry) gets the interval of "
            "the paired t-test (or the exact sign-flip test where it is fine enough) at the level Holm's step-down "
            "procedure judges it at, so the chance of any false supported / contradicted among them is at most "
            "0.05. supported / contradicted: the interval lies on the claimed / the other side of the claim's bound "
            "(0 for superiority, minus the margin for non-inferiority, plus or minus the margin for equivalence); "
            "not resolved: neither (no evidence either way at these seeds; the MDD says what could still hide). "
            "The BH column reads the same family with Benjamini-Hochberg, which bounds the expected share of false "
            f"verdicts instead (a second, more lenient reading). {exploratory} exploratory claim(s) (registered after "
            "their results were seen) form their own family. (reconstruction): the method is our reconstruction, "
            "so the verdict may test our reading of the paper, not the paper's method. difference: mean over seeds "
            "of the per-seed paired difference (in % of the baseline's mean). tuned: the value each of the two "
            "entries was run at, picked on the validation split at seeds disjoint from these. training time: wall "
            "time of training summed over the runs of the claim's comparison, tuning included (shared by the claims "
            "that read that comparison; the CPU time when each run has one thread).")


def table_markdown(data: str | os.PathLike = DEFAULT_DATA) -> str:
    """The generated region: what was judged, the legend, the table, and the claims without data."""
    if not Path(data).is_dir():
        raise ValueError(f"data must be a folder of <comparison>/results.json (default {DEFAULT_DATA}), got {data}")
    judgments, results = judge_data(data)
    judged = {j.claim.name for j in judgments}
    waiting = [name for name in CLAIMS.names() if name not in judged]
    spent = sum(training_seconds(r) for r in results.values())
    head = (f"Regenerated by `smoe claims table` from the compact results of {len(results)} comparison(s) in "
            f"docs/claims/<comparison>/results.json ({format_duration(spent)} of training): {len(judgments)} of "
            f"{len(CLAIMS.names())} registered claims judged")
    blocks = [Text(f"{head}, {counts(judgments)}."), Text(legend(judgments)), summary_table(judgments, results)] \
        if judgments else [Text(f"{head}.")]
    if waiting:
        blocks.append(Text(f"Not yet run into docs/claims (`smoe claims run NAME` runs one): {', '.join(waiting)}."))
    return render_markdown(blocks)


def replace_region(text: str, content: str) -> str:
    """text with everything between CLAIMS_START and CLAIMS_END replaced by content (markers kept)."""
    start, end = text.find(CLAIMS_START), text.find(CLAIMS_END)
    if start < 0 or end < start or text.count(CLAIMS_START) != 1 or text.count(CLAIMS_END) != 1:
        raise ValueError(f"doc must hold {CLAIMS_START} once, followed by {CLAIMS_END} once")
    return f"{text[:start + len(CLAIMS_START)]}\n\n{content}\n{text[end:]}"


def update_doc(doc: str | os.PathLike = DEFAULT_DOC, data: str | os.PathLike = DEFAULT_DATA,
               check: bool = False) -> bool:
    """Regenerate the claims table of `doc` from `data`; True when it changed (with check, `doc` is left as it is)."""
    path = Path(doc)
    if not path.is_file():
        raise ValueError(f"doc must be an existing Markdown file holding {CLAIMS_START} ... {CLAIMS_END}, got {path}")
    text = path.read_text(encoding="utf-8")
    new = replace_region(text, table_markdown(data))
    if new != text and not check:
        path.write_text(new, encoding="utf-8")
    return new != text
