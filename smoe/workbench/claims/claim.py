"""Paper claims as data, and their verdicts.

A `Comparison` is one `smoe compare` grid (task, entries, baseline, preset, seeds, evaluation options); a `Claim`
names its paper, the comparison that tests it, the column it reads (a compared key of
`workbench.results.columns.run_values`: "final.metric", "robust.substitute@5", "routing.load_cv", "fluctuation.top1",
...), the entry whose paired difference against the baseline is judged, its kind and the direction the paper
predicts: "better" / "worse" for the columns with a good direction (`columns.column_direction`: the headline
metric, its corrupted versions, load balance, fluctuation), "higher" / "lower" for the others, "equal" for an
equivalence claim. Claims that read the same comparison share its run folder, so nothing is trained twice.

Kinds: "superiority" (the entry differs in the claimed direction), "non-inferiority" ("at least as good as": not
worse by more than `margin`), "equivalence" ("the same quality": within plus or minus `margin`); margins as in
`measure.rule.Margin` ("2%" of the baseline's mean, or absolute). A claim is judged by the interval of its paired
difference at the level its family judges it at (`judge_claims`: the claims judged together are one confirmatory
family, Holm, with Benjamini-Hochberg as a second reading; claims registered after their results were seen are
`exploratory` and form their own family): "supported" when the interval lies on the claimed side (beyond 0, beyond
minus the margin, inside plus or minus the margin), "contradicted" when it lies on the other side of the same
bound, else "not resolved". A claim on a reconstructed method (`reconstruction`: no official code, the paper's
details not verified) reads e.g. "contradicted (reconstruction)": it may test our reading, not the paper's method.
A claim with `against` reads two columns of the same runs (BPR against positional dropping on the same trained
models), paired by seed, with no baseline entry.

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
from smoe.workbench.grid.tune import parse_tune
from smoe.workbench.measure.rule import Margin, Outcome, Pair, PairedResult, Rule, judge
from smoe.workbench.numbers import finite_mean, format_number
from smoe.workbench.results.columns import LATE_ROUTING, ROUTING_SCALARS, column_direction, is_compared
from smoe.workbench.results.schema import is_finished, load_results, metric_spec
from smoe.workbench.results.verdicts import diverged_seeds, seed_values, series
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.run.evaluate import default_sweep
from smoe.workbench.tasks import get_task

KINDS = ("superiority", "non-inferiority", "equivalence")
CLAIM_VERDICTS = ("supported", "contradicted", "not resolved", "missing")


@dataclass(frozen=True)
class Comparison:
    """One `smoe compare` grid, trained once into OUT/<name>/ and read by every claim that names it.

    entries: `smoe compare --routers` syntax; baseline: the label differences are taken against; corruptions: None
    = the task's sweep, () = none; capacities: test-time capacity ratios (V-MoE); overrides: --set of every run;
    tune: `--tune KEY=V1,V2,...` specs, what every entry picks on the validation split before the comparison runs
    (`workbench.grid.tune`; () = nothing is tuned).
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
    tune: tuple[str, ...] = ()

    def __post_init__(self):
        task = get_task(self.task)
        if self.tune:
            parse_tune(self.tune)
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
                             capacities=list(self.capacities), baseline=self.baseline,
                             tune=parse_tune(self.tune) if self.tune else None, **compare)

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
        words += [w for spec in self.tune for w in ("--tune", spec)]
        return " ".join(shlex.quote(w) for w in [*words, "--out", str(out)])


@dataclass(frozen=True)
class Claim:
    """A paper's claim: `entry` differs from `baseline` (None: the comparison's) on `column` in `direction`.

    against: another column of the same runs; the judged difference is then column - against, per seed, within
    `entry` (e.g. BPR against positional dropping at one test-time capacity), and `baseline` is unused.
    kind / margin: see the module docstring (a margin for non-inferiority and equivalence only); reconstruction: the
    method is our reconstruction; exploratory: registered after its results were seen; caveat: what the column
    cannot show (printed with the verdict).
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
    kind: str = "superiority"
    margin: str | None = None
    reconstruction: bool = False
    exploratory: bool = False
    caveat: str = ""

    def __post_init__(self):
        comparison = COMPARISONS.get(self.comparison)
        check_choice("kind", self.kind, KINDS)
        if (self.margin is None) != (self.kind == "superiority"):
            raise ValueError(f"claim {self.name!r}: a {self.kind} claim takes "
                             f"{'no margin' if self.kind == 'superiority' else 'a margin'}, got {self.margin!r}")
        if self.margin is not None:
            Margin.parse(self.margin)
        for column in (self.column, self.against):
            if column is not None and not comparison.has_column(column):
                raise ValueError(f"claim {self.name!r}: column {column!r} is not a compared column of comparison "
                                 f"{self.comparison!r} (its corruption columns: {comparison.robust_columns()})")
        good = column_direction(self.column, get_task(comparison.task).higher_is_better)
        if self.kind == "equivalence":
            check_choice("direction", self.direction, ("equal",))
        else:
            check_choice("direction", self.direction, ("higher", "lower") if good is None else ("better", "worse"))
        if self.kind != "superiority" and good is None:
            raise ValueError(f"claim {self.name!r}: a {self.kind} claim needs a column with a good direction, "
                             f"not {self.column!r}")
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
        """What is judged: 'xmoe - topk on routing.effective_rank_input, claimed higher'; 'ssr - topk on
        final.metric, claimed non-inferior (margin 2%)'."""
        claimed = {"superiority": self.direction, "non-inferiority": f"non-inferior (margin {self.margin})",
                   "equivalence": f"equivalent (margin {self.margin})"}[self.kind]
        if self.against is not None:
            return f"{self.entry}: {self.column} - {self.against}, claimed {claimed}"
        return f"{self.entry} - {self.reference} on {self.column}, claimed {claimed}"

    def outcomes(self) -> tuple[Outcome, ...]:
        """"supported" and "contradicted" as statements on the interval (`measure.rule`), in the column's good
        direction (higher for a column without one)."""
        if self.kind == "equivalence":
            return (("supported", ((">", -1), ("<", 1))), ("contradicted", ((">", 1),)),
                    ("contradicted", (("<", -1),)))
        up = self.direction in ("better", "higher")
        bound = 0 if self.kind == "superiority" else -1 if up else 1
        return ("supported", ((">" if up else "<", bound),)), ("contradicted", (("<" if up else ">", bound),))


COMPARISONS: Registry[Comparison] = Registry("comparison")
CLAIMS: Registry[Claim] = Registry("claim")


# ---------------------------------------------------------------- judging


@dataclass(frozen=True)
class Judgment:
    """A claim read from its comparison's results: its verdict in its family (Holm), the paired comparison behind
    it (`PairedResult.to_dict()`), and for a confirmatory claim the Benjamini-Hochberg reading ("verdict",
    "p_adjusted"); result None and a note when data is missing."""

    claim: Claim
    verdict: str
    result: dict | None
    reference_mean: float | None  # mean over seeds of the value the difference is taken from
    setting: str  # "tiny, 300 steps": the preset and training steps of the comparison's runs
    note: str = ""
    bh: dict | None = None

    @property
    def shown(self) -> str:
        """The verdict as printed: 'contradicted (reconstruction)', 'not resolved (exploratory)'."""
        marks = [m for m, on in (("reconstruction", self.claim.reconstruction and self.verdict in (
            "supported", "contradicted")), ("exploratory", self.claim.exploratory)) if on]
        return self.verdict + (f" ({', '.join(marks)})" if marks else "")

    def line(self) -> str:
        """'xmoe-collapse: supported (xmoe - topk on ..., claimed higher; +2.64 (+14.0 %), [...] ...)'."""
        head = f"{self.claim.name}: {self.shown}"
        if self.result is None:
            return f"{head} ({self.note})"
        return f"{head} ({self.claim.describe()}; {difference_text(self.result)})"

    def to_dict(self) -> dict:
        return {**asdict(self.claim), "verdict": self.verdict, "shown": self.shown, "setting": self.setting,
                "note": self.note, "reference_mean": self.reference_mean, "comparison_result": self.result,
                "bh": self.bh}


def interval_text(result: Mapping) -> str:
    """'[+0.12, +5.16] (98.3 %)': the interval at the level the claim was judged at, with its confidence."""
    low, high = result.get("ci_low"), result.get("ci_high")
    if low is None or high is None:
        return "unbounded"
    return f"[{format_number(low, True)}, {format_number(high, True)}] ({100 * (1 - result['level']):.3g} %)"


def difference_text(result: Mapping) -> str:
    """'+2.64 (+1.4 %), [+0.12, +5.16] (99.8 %), p (Holm over 24) = 0.031, MDD 3.1, 3 seeds'."""
    rel = result.get("relative")
    return (f"{format_number(result.get('mean'), signed=True)}{'' if rel is None else f' ({rel:+.1f} %)'}, "
            f"{interval_text(result)}, p ({result['adjustment']} over {result['family_size']}) = "
            f"{format_number(result.get('p_adjusted'))}, MDD {format_number(result.get('mdd'))}, "
            f"{result.get('n', 0)} seeds" + (f"; {result['note']}" if result.get("note") else ""))


def claim_pair(claim: Claim, results: str | os.PathLike | Mapping) -> tuple[Pair | None, float | None]:
    """The claim's per-seed values from its comparison's results (diverged and failed runs count against their
    entry, `verdicts.diverged_seeds`) and the mean of the values the difference is taken from; None when no seed
    has both."""
    results = load_results(results)
    values, diverged = seed_values(results), diverged_seeds(results)
    seeds = sorted({s for runs in values.values() for s in runs} | {s for d in diverged.values() for s in d})
    entry = series(values, diverged, claim.entry, claim.column, seeds)
    base = series(values, diverged, claim.reference, claim.against or claim.column, seeds)
    reference = finite_mean(base)
    if not any(e is not None and b is not None for e, b in zip(entry, base)):
        return None, reference
    margin = None if claim.margin is None else Margin.parse(claim.margin)
    return Pair(entry, base, column_direction(claim.column, metric_spec(results)[1]), claim.outcomes(),
                margin), reference


def _setting(results: Mapping) -> str:
    steps = {run.get("steps") for run in results["runs"] if is_finished(run)} - {None}
    return f"{results.get('preset', '?')}, {'/'.join(map(str, sorted(steps))) or '?'} steps"


def judge_claims(claims: Sequence[Claim], results: Mapping[str, str | os.PathLike | Mapping],
                 alpha: float = 0.05) -> list[Judgment]:
    """Every claim's verdict, from the results of its comparison (results: comparison name -> results dict,
    results.json or its folder; a claim whose comparison is missing there is skipped). The confirmatory claims are
    one family (Holm; Benjamini-Hochberg as a second reading), the exploratory ones another (Holm)."""
    loaded = {name: load_results(r) for name, r in results.items()}
    present = [c for c in claims if c.comparison in loaded]
    pairs = {c.name: claim_pair(c, loaded[c.comparison]) for c in present}
    judged: dict[str, PairedResult] = {}
    bh: dict[str, PairedResult] = {}
    for exploratory, family in ((False, "claims"), (True, "exploratory claims")):
        members = {c.name: pairs[c.name][0] for c in present
                   if c.exploratory == exploratory and pairs[c.name][0] is not None}
        judged.update(judge(members, Rule(alpha=alpha, adjustment="holm", family=family)))
        if not exploratory:
            bh.update(judge(members, Rule(alpha=alpha, adjustment="bh", family=f"{family} (BH)")))
    out = []
    for c in present:
        setting, reference = _setting(loaded[c.comparison]), pairs[c.name][1]
        if c.name not in judged:
            what = f" and {c.against}" if c.against else f" together with {c.reference}"
            out.append(Judgment(c, "missing", None, reference, setting,
                                f"no finished runs of {c.entry} recorded {c.column}{what}"))
            continue
        other = bh.get(c.name)
        out.append(Judgment(c, judged[c.name].verdict, judged[c.name].to_dict(), reference, setting, c.caveat,
                            None if other is None else {"verdict": other.verdict, "p_adjusted": other.p_adjusted}))
    return out
