"""Running the registered claims: `run_claims` trains and evaluates their comparisons (resumable: `smoe compare`
semantics) in the run store STORE/<comparison>/, writes each finished comparison's compact results to
DATA/<comparison>/results.json (`workbench.claims.data`) and judges the claims; `write_summary` writes
STORE/claims.md and STORE/claims.json for every claim with results in DATA."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smoe._files import atomic_write
from smoe.workbench.claims.claim import CLAIMS, COMPARISONS, Claim, Judgment
from smoe.workbench.claims.data import DEFAULT_DATA, store_dir, write_compact
from smoe.workbench.claims.table import counts, judge_data, legend, summary_table
from smoe.workbench.document import Text, render_markdown
from smoe.workbench.grid.compare import CompareConfig, run_compare
from smoe.workbench.grid.jobs import GridConfig
from smoe.workbench.report.across_tasks import write_across
from smoe.workbench.tasks import get_task

ACROSS = "across"  # STORE/across/: the judged claims' comparisons read together
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


def run_claims(names: Sequence[str], store: str | os.PathLike | None = None,
               data: str | os.PathLike = DEFAULT_DATA, seeds: int | None = None, steps: int | None = None,
               preset: str | None = None, overrides: Sequence[str] = (), progress: bool = True,
               grid: GridConfig | None = None, **compare) -> ClaimsRun:
    """Run the comparisons of the named claims (all when empty) in store/<comparison>/ (`data.store_dir`: None is
    $SMOE_STORE or the user's cache), write each finished one's compact results to data/<comparison>/results.json
    and judge the claims from there.

    seeds / steps replace every comparison's own; preset applies to the comparisons whose task has it (`plan`);
    overrides (--set) apply to every run; grid: the executor of each comparison's runs (`run_compare`);
    `compare`: further CompareConfig fields (device). Every comparison's configuration is checked before anything
    is trained. An interrupted comparison writes no data and the later ones do not run.
    """
    claims = select(names)
    store = store_dir(store)
    configs, notes = plan(claims, store, seeds, steps, preset, overrides, **compare)
    failed: list[str] = []
    for name, config in configs.items():
        command = COMPARISONS.get(name).command(config.out, config.seeds, config.steps, config.preset, overrides)
        print(f"== {name}: {command}", file=sys.stderr)
        result = run_compare(config, command=command, progress=progress, grid=grid)
        failed += [f"{name}: {line}" for line in result.failed]
        if result.interrupted is not None:
            return ClaimsRun(judge_selected(data, claims), failed, result.interrupted, notes)
        write_compact(result.results, Path(data) / name)
    return ClaimsRun(judge_selected(data, claims), failed, None, notes)


def judge_selected(data: str | os.PathLike, claims: Sequence[Claim]) -> list[Judgment]:
    """The judgments of `claims` with results in `data`, each judged in its family of every registered claim with
    results there (`table.judge_data`), not in a family of the selected ones only."""
    names = {c.name for c in claims}
    return [j for j in judge_data(data)[0] if j.claim.name in names]


# ---------------------------------------------------------------- the summary


def write_summary(out: str | os.PathLike, data: str | os.PathLike, command: str) -> tuple[Path, Path]:
    """OUT/claims.md (the command that wrote it, the legend, the table) and OUT/claims.json (every judgment) of every
    claim with results in `data`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    judgments, results = judge_data(data)
    head = (f"Written by `{command}` (`smoe.workbench.claims`) from every comparison with results in {data}: "
            f"{len(judgments)} claim(s), {counts(judgments)}.")
    md, js = out / SUMMARY_MD, out / SUMMARY_JSON
    atomic_write(md, render_markdown([Text(head), Text(legend(judgments)), summary_table(judgments, results)]).encode())
    atomic_write(js, json.dumps({"command": command, "claims": [j.to_dict() for j in judgments]}, indent=1).encode())
    return md, js


def write_claims_across(out: str | os.PathLike, data: str | os.PathLike, judgments: Sequence[Judgment]) -> Path | None:
    """OUT/across/report.html (and .md, plots/): the comparisons (results in data/<comparison>/) of the judged claims
    read across tasks (`workbench.report.across_tasks`: per-comparison verdicts, normalised scores, aggregate,
    ranks); None when fewer than two comparisons have results."""
    folders = list(dict.fromkeys(Path(data) / j.claim.comparison for j in judgments if j.result is not None))
    return write_across(folders, Path(out) / ACROSS).html if len(folders) >= 2 else None
