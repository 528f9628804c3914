"""Paper claims as data, and their verdicts.

A `Comparison` is one `smoe compare` grid (task, entries, baseline, preset, seeds, evaluation options); a `Claim`
names its paper, the comparison that tests it, the column it reads (a compared key of
`workbench.results.columns.run_values`: "final.metric", "robust.substitute@5", "routing.load_cv", "fluctuation.top1",
...), the entry whose paired difference against the baseline is judged, and the direction the paper predicts: "better"
/ "worse" for the columns with a good direction (`columns.column_direction`: the headline metric, its corrupted
versions, load balance, fluctuation), "higher" / "lower" for the others. Claims that read the
same comparison share its run folder, so nothing is trained twice.

Verdict: the comparison's paired verdict for that column and entry (`workbench.results.verdicts`: Student t over seeds,
Holm over the entries compared with one baseline) read against the claim: the claimed direction -> "supported", the
opposite -> "contradicted", no resolved difference -> "not resolved" (no evidence either way at these seeds: the
minimum detectable difference says how large a difference could still hide). A claim of "no worse" (the same quality
without an aux loss) is judged as "better": a test over a few seeds cannot show equality. A claim with `against` reads
two columns of the same runs (BPR against positional dropping on the same trained models), paired by seed, with no
baseline entry.

The registered claims are in `workbench.claims.registered`; running and summarising them in
`workbench.claims.run`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from smoe._validate import check_choice, check_int
from smoe.registry import Registry
from smoe.workbench.grid.compare import CompareConfig
from smoe.workbench.numbers import finite_mean, format_number
from smoe.workbench.results.columns import LATE_ROUTING, ROUTING_SCALARS, column_direction, is_compared
from smoe.workbench.results.schema import is_finished, load_results, metric_spec
from smoe.workbench.results.verdicts import compare_column, paired_comparisons, seed_values
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.run.evaluate import default_sweep
from smoe.workbench.tasks import get_task

DIRECTIONS = ("better", "worse", "higher", "lower")
OPPOSITE = {"better": "worse", "worse": "better", "higher": "lower", "lower": "higher"}
CLAIM_VERDICTS = ("supported", "contradicted", "not resolved", "missing")


@dataclass(frozen=True)
class Comparison:
    """One `smoe compare` grid, trained once into OUT/<name>/ and read by every claim that names it.

    entries: `smoe compare --routers` syntax; baseline: the label differences are taken against; corruptions: None
    = the task's sweep, () = none; capacities: test-time capacity ratios (V-MoE); overrides: --set of every run.
    """

    name: str
    task: str
    entries: str
    baseline: str
    preset: str = "tiny"
    seeds: int = 3
    steps: int | None = None
    corruptions: tuple[str, ...] | None = None
    capacities: tuple[float, ...] = ()
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        task = get_task(self.task)
        labels = [e.label for e in parse_entries(self.entries)]
        if self.baseline not in labels:
            raise ValueError(f"comparison {self.name!r}: baseline must be one of its entries {labels}, "
                             f"got {self.baseline!r}")
        check_choice("preset", self.preset, tuple(task.presets))
        check_int("seeds", self.seeds, low=1)
        if self.steps is not None:
            check_int("steps", self.steps, low=1)

    def config(self, out: str | os.PathLike, seeds: int | None = None, steps: int | None = None,
               preset: str | None = None, overrides: Sequence[str] = (), **compare) -> CompareConfig:
        """The CompareConfig into `out`; seeds, steps and preset replace the comparison's own when given,
        overrides (--set) follow its own, and `compare` passes further CompareConfig fields (device) through."""
        return CompareConfig(task=self.task, entries=parse_entries(self.entries), out=str(out),
                             seeds=self.seeds if seeds is None else seeds, preset=preset or self.preset,
                             steps=self.steps if steps is None else steps,
                             overrides=[*self.overrides, *overrides],
                             corruptions=None if self.corruptions is None else list(self.corruptions),
                             capacities=list(self.capacities), baseline=self.baseline, **compare)

    def robust_columns(self) -> list[str]:
        """The "robust.<corruption>@<level>" columns its results will hold: each corruption's strongest level."""
        sweep = default_sweep(get_task(self.task).corruptions) if self.corruptions is None else self.corruptions
        strongest: dict[str, int] = {}
        for spec in sweep:
            name, level = spec.split(":")
            strongest[name] = max(int(level), strongest.get(name, 0))
        for mode in ("capacity-bpr", "capacity-vanilla") if self.capacities else ():
            strongest[mode] = len(set(self.capacities))
        return [f"robust.{name}@{level}" for name, level in strongest.items()]

    def has_column(self, column: str) -> bool:
        """Whether `column` is a compared column (`columns.is_compared`) that this comparison's runs record."""
        if column.startswith("robust."):
            return column in self.robust_columns()
        return is_compared(column) and (column in ("final.metric", *LATE_ROUTING) or column.startswith("routing.nmi.")
                                        or column.removeprefix("routing.") in ROUTING_SCALARS)

    def command(self, out: str | os.PathLike, seeds: int | None = None, steps: int | None = None,
                preset: str | None = None, overrides: Sequence[str] = ()) -> str:
        """The equivalent `smoe compare` command line."""
        preset, seeds, steps = preset or self.preset, self.seeds if seeds is None else seeds, steps or self.steps
        words = ["smoe", "compare", "--task", self.task, "--routers", self.entries, "--baseline", self.baseline]
        words += (["--preset", preset] if preset != "tiny" else []) + ["--seeds", str(seeds)]
        words += ["--steps", str(steps)] if steps else []
        words += [w for item in (*self.overrides, *overrides) for w in ("--set", item)]
        if self.corruptions is not None:
            words += ["--corrupt", ",".join(self.corruptions)]
        if self.capacities:
            words += ["--capacity", ",".join(f"{c:g}" for c in self.capacities)]
        return " ".join(shlex.quote(w) for w in [*words, "--out", str(out)])


@dataclass(frozen=True)
class Claim:
    """A paper's claim: `entry` differs from `baseline` (None: the comparison's) on `column` in `direction`.

    against: another column of the same runs; the judged difference is then column - against, per seed, within
    `entry` (e.g. BPR against positional dropping at one test-time capacity), and `baseline` is unused.
    """

    name: str
    paper: str
    statement: str
    comparison: str
    column: str
    entry: str
    direction: str
    baseline: str | None = None
    against: str | None = None

    def __post_init__(self):
        comparison = COMPARISONS.get(self.comparison)
        for column in (self.column, self.against):
            if column is not None and not comparison.has_column(column):
                raise ValueError(f"claim {self.name!r}: column {column!r} is not a compared column of comparison "
                                 f"{self.comparison!r} (its corruption columns: {comparison.robust_columns()})")
        good = column_direction(self.column, get_task(comparison.task).higher_is_better)
        check_choice("direction", self.direction, ("higher", "lower") if good is None else ("better", "worse"))
        labels = [e.label for e in parse_entries(comparison.entries)]
        for role, label in (("entry", self.entry), ("baseline", self.baseline)):
            if label is not None and label not in labels:
                raise ValueError(f"claim {self.name!r}: {role} must be one of {labels}, got {label!r}")
        if self.against is None and self.entry == self.reference:
            raise ValueError(f"claim {self.name!r}: entry and baseline are both {self.entry!r}; set against=")

    @property
    def reference(self) -> str:
        """The label the difference is taken against (the entry itself for a claim with `against`)."""
        if self.against is not None:
            return self.entry
        return self.baseline or COMPARISONS.get(self.comparison).baseline

    def describe(self) -> str:
        """What is judged: 'xmoe - topk on routing.effective_rank_input, claimed higher'."""
        if self.against is not None:
            return f"{self.entry}: {self.column} - {self.against}, claimed {self.direction}"
        return f"{self.entry} - {self.reference} on {self.column}, claimed {self.direction}"


COMPARISONS: Registry[Comparison] = Registry("comparison")
CLAIMS: Registry[Claim] = Registry("claim")


def claim_verdict(direction: str, verdict: str) -> str:
    """The claim's verdict from the comparison's (same vocabulary: better / worse, or higher / lower for a column
    without a good direction): the claimed direction -> "supported", the opposite -> "contradicted", "not resolved"
    -> "not resolved"."""
    check_choice("direction", direction, DIRECTIONS)
    check_choice("verdict", verdict, (direction, OPPOSITE[direction], "not resolved"))
    return {direction: "supported", OPPOSITE[direction]: "contradicted"}.get(verdict, "not resolved")


# ---------------------------------------------------------------- judging


@dataclass(frozen=True)
class Judgment:
    """A claim read from its comparison's results: verdict, and the paired comparison behind it (the
    `PairedResult.to_dict()` fields, with "direction" and "baseline"); None and a note when data is missing."""

    claim: Claim
    verdict: str
    result: dict | None
    reference_mean: float | None  # mean over seeds of the value the difference is taken from
    setting: str  # "tiny, 300 steps": the preset and training steps of the comparison's runs
    note: str = ""

    def line(self) -> str:
        """'xmoe-collapse: supported (xmoe - topk on ..., claimed higher; +2.64 (+14 %), 95 % CI [...], ...)'."""
        head = f"{self.claim.name}: {self.verdict}"
        if self.result is None:
            return f"{head} ({self.note})"
        return f"{head} ({self.claim.describe()}; {difference_text(self.result, self.reference_mean)})"

    def to_dict(self) -> dict:
        return {**asdict(self.claim), "verdict": self.verdict, "setting": self.setting, "note": self.note,
                "reference_mean": self.reference_mean, "comparison_result": self.result}


def difference_text(result: Mapping, reference_mean: float | None) -> str:
    """'+2.64 (+1.4 %), 95 % CI [0.12, 5.16], p = 0.031, MDD 3.1, 3 seeds'."""
    mean, low, high = (result.get(k) for k in ("mean", "ci_low", "ci_high"))

    p = result.get("p_adjusted", result.get("p_value"))
    return (f"{format_number(mean, signed=True)}{relative(mean, reference_mean)}, "
            f"95 % CI [{format_number(low)}, {format_number(high)}], p = {format_number(p)}, "
            f"MDD {format_number(result.get('mdd'))}, {result.get('n', 0)} seeds")


def relative(mean: float | None, reference: float | None) -> str:
    """' (+1.4 %)': mean in % of the reference; '' when either is missing or the reference is 0."""
    return f" ({100 * mean / reference:+.1f} %)" if mean is not None and reference else ""


def judge(claim: Claim, results: str | os.PathLike | Mapping, alpha: float = 0.05) -> Judgment:
    """The claim's verdict from its comparison's results (a results dict, results.json or its folder)."""
    results = load_results(results)
    steps = {run.get("steps") for run in results["runs"] if is_finished(run)} - {None}
    setting = f"{results.get('preset', '?')}, {'/'.join(map(str, sorted(steps))) or '?'} steps"
    values = seed_values(results)
    if claim.against is None:
        result = paired_comparisons(results, claim.reference, alpha).get(claim.column, {}).get(claim.entry)
        reference = finite_mean(v.get(claim.column) for v in values.get(claim.reference, {}).values())
    else:  # the two columns of the entry's runs as two entries, paired by seed
        runs = values.get(claim.entry, {})
        pair = {role: {seed: {claim.column: v[key]} for seed, v in runs.items() if key in v}
                for role, key in (("column", claim.column), ("against", claim.against))}
        direction = column_direction(claim.column, metric_spec(results)[1])
        result = compare_column(pair, claim.column, "against", direction, alpha).get("column")
        result = None if result is None else {**result, "baseline": f"{claim.entry} {claim.against}"}
        reference = finite_mean(v.get(claim.against) for v in runs.values())
    if result is None or not result.get("n"):
        return Judgment(claim, "missing", None, reference, setting,
                        f"no finished runs of {claim.entry} recorded {claim.column}"
                        + (f" and {claim.against}" if claim.against else f" together with {claim.reference}"))
    return Judgment(claim, claim_verdict(claim.direction, result["verdict"]), result, reference, setting)
