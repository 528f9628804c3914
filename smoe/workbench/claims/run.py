"""Running the registered claims: `run_claims` trains and evaluates their comparisons (resumable: `smoe compare`
semantics) under OUT/<comparison>/ and judges them; `write_summary` writes OUT/claims.md and OUT/claims.json for
every claim whose comparison has results in OUT."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smoe._files import atomic_write
from smoe.workbench.claims.claim import (
    CLAIM_VERDICTS,
    CLAIMS,
    COMPARISONS,
    Claim,
    Judgment,
    interval_text,
    judge_claims,
)
from smoe.workbench.document import Table, Text, render_markdown
from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.grid.jobs import GridConfig
from smoe.workbench.numbers import format_number
from smoe.workbench.results.schema import RESULTS_FILE
from smoe.workbench.tasks import get_task

DEFAULT_OUT = "runs/claims"
SUMMARY_MD, SUMMARY_JSON = "claims.md", "claims.json"


@dataclass
class ClaimsRun:
    judgments: list[Judgment]
    failed: list[str]
    interrupted: int | None  # the signal that stopped a comparison; the later ones did not run
    notes: list[str]


def select(names: Sequence[str]) -> list[Claim]:
    """Claims by name (an unknown name lists the valid ones); every registered claim for an empty list."""
    return [CLAIMS.get(name) for name in names] if names else [CLAIMS.get(name) for name in CLAIMS.names()]


def plan(claims: Sequence[Claim], out: str | os.PathLike, seeds: int | None = None, steps: int | None = None,
         preset: str | None = None, overrides: Sequence[str] = (),
         **compare) -> tuple[dict[str, CompareConfig], list[str]]:
    """The CompareConfig of every comparison the claims read (into out/<comparison>/), each entry's run
    configuration checked, and notes on comparisons that keep their own preset (their task lacks `preset`)."""
    comparisons = [COMPARISONS.get(name) for name in dict.fromkeys(c.comparison for c in claims)]
    if preset is not None and not any(preset in get_task(c.task).presets for c in comparisons):
        known = sorted({p for c in comparisons for p in get_task(c.task).presets})
        raise ValueError(f"preset {preset!r} is not a preset of any task of these claims; presets: {known}")
    configs, notes = {}, []
    for comparison in comparisons:
        chosen = preset
        if preset is not None and preset not in get_task(comparison.task).presets:
            notes.append(f"task {comparison.task} has no preset {preset!r}; comparison {comparison.name} runs at its "
                         f"own ({comparison.preset})")
            chosen = None
        config = comparison.config(Path(out) / comparison.name, seeds, steps, chosen, overrides, **compare)
        for entry in config.entries:
            config.run_config(entry, 0)
        configs[comparison.name] = config
    return configs, notes


def run_claims(names: Sequence[str], out: str | os.PathLike = DEFAULT_OUT, seeds: int | None = None,
               steps: int | None = None, preset: str | None = None, overrides: Sequence[str] = (),
               progress: bool = True, grid: GridConfig | None = None, **compare) -> ClaimsRun:
    """Run the comparisons of the named claims (all when empty) into out/<comparison>/ and judge the claims.

    seeds / steps replace every comparison's own; preset applies to the comparisons whose task has it (`plan`);
    overrides (--set) apply to every run; grid: the executor of each comparison's runs (`run_compare`);
    `compare`: further CompareConfig fields (device). Every comparison's configuration is checked before anything
    is trained.
    """
    claims = select(names)
    configs, notes = plan(claims, out, seeds, steps, preset, overrides, **compare)
    failed: list[str] = []
    for name, config in configs.items():
        command = COMPARISONS.get(name).command(config.out, config.seeds, config.steps, config.preset, overrides)
        print(f"== {name}: {command}", file=sys.stderr)
        result = run_compare(config, command=command, progress=progress, grid=grid)
        failed += [f"{name}: {line}" for line in result.failed]
        if result.interrupted is not None:
            done = [c for c in claims if (Path(out) / c.comparison / RESULTS_FILE).exists()]
            return ClaimsRun(judge_folder(out, done), failed, result.interrupted, notes)
    return ClaimsRun(judge_folder(out, claims), failed, None, notes)


def judge_folder(out: str | os.PathLike, claims: Sequence[Claim] | None = None) -> list[Judgment]:
    """Judgments of the claims (default: every registered one) whose comparison has results in out/<comparison>/,
    judged together (`judge_claims`: the confirmatory ones one family)."""
    claims = select([]) if claims is None else claims
    found = {c.comparison: path for c in claims if (path := Path(out) / c.comparison / RESULTS_FILE).exists()}
    return judge_claims(claims, found)


# ---------------------------------------------------------------- the summary


def summary_table(judgments: Sequence[Judgment]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table of OUT/claims.md: one row per claim."""
    body = []
    for j in judgments:
        r, bh = j.result or {}, j.bh or {}
        rel = r.get("relative")
        verdict = f"**{j.shown}**" if j.verdict in ("supported", "contradicted") else j.shown
        body.append([
            j.claim.name, j.claim.paper, j.claim.describe(), j.setting,
            "" if r.get("mean") is None else format_number(r["mean"], True) + (
                "" if rel is None else f" ({rel:+.1f} %)"),
            interval_text(r) if r else "", "" if not r else format_number(r["p_adjusted"]),
            verdict + (f" ({j.note})" if j.note else ""),
            "" if not bh else f"{format_number(bh['p_adjusted'])}: {bh['verdict']}",
            "" if r.get("mdd") is None else format_number(r["mdd"]), str(r.get("n", "")),
        ])
    header = ["claim", "paper", "judged (entry - baseline on column)", "setting", "difference",
              "interval (confidence)", "p (Holm)", "verdict (Holm)", "p: verdict (BH, FDR)", "MDD (80 %)", "seeds"]
    return header, body


def legend(judgments: Sequence[Judgment]) -> str:
    """How the claims were judged, with the family sizes."""
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
            "so the verdict may test our reading of the paper, not the paper's method.")


def write_summary(out: str | os.PathLike, judgments: Sequence[Judgment], command: str) -> tuple[Path, Path]:
    """OUT/claims.md (the command that wrote it, the legend, the table) and OUT/claims.json (every judgment)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = ", ".join(f"{sum(j.verdict == v for j in judgments)} {v}" for v in CLAIM_VERDICTS
                       if any(j.verdict == v for j in judgments))
    head = (f"Written by `{command}` (`smoe.workbench.claims`) from every comparison with results in {out}: "
            f"{len(judgments)} claim(s), {counts}. difference: mean over seeds of the per-seed paired difference "
            "(in % of the baseline's mean).")
    md, js = out / SUMMARY_MD, out / SUMMARY_JSON
    atomic_write(md, render_markdown([Text(head), Text(legend(judgments)), Table(*summary_table(judgments))]).encode())
    atomic_write(js, json.dumps({"command": command, "claims": [j.to_dict() for j in judgments]}, indent=1).encode())
    return md, js
