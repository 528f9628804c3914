"""Paper claims as data, and their verdicts.

A `Comparison` is one `smoe compare` grid (task, entries, baseline, preset, seeds, evaluation options); a `Claim`
names its paper, the comparison that tests it, the column it reads (a compared key of
`smoe.workbench.columns.run_values`: "final.metric", "robust.substitute@5", "routing.load_cv", "fluctuation.top1",
...), the entry whose paired difference against the baseline is judged, and the direction the paper predicts: "better"
/ "worse" for the columns with a good direction (`columns.column_direction`: the headline metric, its corrupted
versions, load balance, fluctuation), "higher" / "lower" for the others. Claims that read the
same comparison share its run folder, so nothing is trained twice.

Verdict: the comparison's paired verdict for that column and entry (`smoe.workbench.verdicts`: Student t over seeds,
Holm over the entries compared with one baseline) read against the claim: the claimed direction -> "supported", the
opposite -> "contradicted", no resolved difference -> "not resolved" (no evidence either way at these seeds: the
minimum detectable difference says how large a difference could still hide). A claim of "no worse" (the same quality
without an aux loss) is judged as "better": a test over a few seeds cannot show equality. A claim with `against` reads
two columns of the same runs (BPR against positional dropping on the same trained models), paired by seed, with no
baseline entry.

`run_claims` trains and evaluates the comparisons (resumable: `smoe compare` semantics) under OUT/<comparison>/ and
judges their claims; `write_summary` writes OUT/claims.md and OUT/claims.json for every claim whose comparison has
results in OUT. The registry below is what docs/results.md reproduces; `smoe claims` lists it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from smoe._validate import check_choice, check_int
from smoe.registry import Registry
from smoe.workbench.checkpoint import atomic_write
from smoe.workbench.columns import LATE_ROUTING, ROUTING_SCALARS, column_direction, is_compared
from smoe.workbench.compare import CompareConfig, parse_entries, run_compare
from smoe.workbench.document import Table, Text, render_markdown
from smoe.workbench.evaluate import default_sweep
from smoe.workbench.grid import GridConfig
from smoe.workbench.report import format_number
from smoe.workbench.results import RESULTS_FILE, is_finished, load_results, metric_spec
from smoe.workbench.tasks import get_task
from smoe.workbench.verdicts import compare_column, paired_comparisons, seed_values

DIRECTIONS = ("better", "worse", "higher", "lower")
OPPOSITE = {"better": "worse", "worse": "better", "higher": "lower", "lower": "higher"}
CLAIM_VERDICTS = ("supported", "contradicted", "not resolved", "missing")
DEFAULT_OUT = "runs/claims"
SUMMARY_MD, SUMMARY_JSON = "claims.md", "claims.json"


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

    def num(x: float | None, sign: str = "") -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:{sign}.4g}"

    p = result.get("p_adjusted", result.get("p_value"))
    return (f"{num(mean, '+')}{_relative(mean, reference_mean)}, 95 % CI [{num(low)}, {num(high)}], p = {num(p)}, "
            f"MDD {num(result.get('mdd'))}, {result.get('n', 0)} seeds")


def _relative(mean: float | None, reference: float | None) -> str:
    """' (+1.4 %)': mean in % of the reference; '' when either is missing or the reference is 0."""
    return f" ({100 * mean / reference:+.1f} %)" if mean is not None and reference else ""


def _mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None and math.isfinite(v)]
    return sum(found) / len(found) if found else None


def judge(claim: Claim, results: str | os.PathLike | Mapping, alpha: float = 0.05) -> Judgment:
    """The claim's verdict from its comparison's results (a results dict, results.json or its folder)."""
    results = load_results(results)
    steps = {run.get("steps") for run in results["runs"] if is_finished(run)} - {None}
    setting = f"{results.get('preset', '?')}, {'/'.join(map(str, sorted(steps))) or '?'} steps"
    values = seed_values(results)
    if claim.against is None:
        result = paired_comparisons(results, claim.reference, alpha).get(claim.column, {}).get(claim.entry)
        reference = _mean(v.get(claim.column) for v in values.get(claim.reference, {}).values())
    else:  # the two columns of the entry's runs as two entries, paired by seed
        runs = values.get(claim.entry, {})
        pair = {role: {seed: {claim.column: v[key]} for seed, v in runs.items() if key in v}
                for role, key in (("column", claim.column), ("against", claim.against))}
        direction = column_direction(claim.column, metric_spec(results)[1])
        result = compare_column(pair, claim.column, "against", direction, alpha).get("column")
        result = None if result is None else {**result, "baseline": f"{claim.entry} {claim.against}"}
        reference = _mean(v.get(claim.against) for v in runs.values())
    if result is None or not result.get("n"):
        return Judgment(claim, "missing", None, reference, setting,
                        f"no finished runs of {claim.entry} recorded {claim.column}"
                        + (f" and {claim.against}" if claim.against else f" together with {claim.reference}"))
    return Judgment(claim, claim_verdict(claim.direction, result["verdict"]), result, reference, setting)


# ---------------------------------------------------------------- running


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
    """Judgments of the claims (default: every registered one) whose comparison has results in out/<comparison>/."""
    claims = select([]) if claims is None else claims
    return [judge(claim, Path(out) / claim.comparison / RESULTS_FILE) for claim in claims
            if (Path(out) / claim.comparison / RESULTS_FILE).exists()]


# ---------------------------------------------------------------- the summary


def summary_table(judgments: Sequence[Judgment]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table of OUT/claims.md: one row per claim."""
    body = []
    for j in judgments:
        r = j.result or {}
        mean, low, high = r.get("mean"), r.get("ci_low"), r.get("ci_high")
        body.append([
            j.claim.name, j.claim.paper, j.claim.describe(), j.setting,
            "" if mean is None else f"{format_number(mean)}{_relative(mean, j.reference_mean)}",
            "" if low is None or high is None else f"[{format_number(low)}, {format_number(high)}]",
            "" if r.get("p_adjusted") is None else format_number(r["p_adjusted"]),
            "" if r.get("mdd") is None else format_number(r["mdd"]), str(r.get("n", "")),
            f"**{j.verdict}**" if j.verdict in ("supported", "contradicted") else j.verdict + (
                f" ({j.note})" if j.note else ""),
        ])
    header = ["claim", "paper", "judged (entry - baseline on column)", "setting", "difference", "95 % CI",
              "p (Holm)", "MDD (80 %)", "seeds", "verdict"]
    return header, body


def write_summary(out: str | os.PathLike, judgments: Sequence[Judgment], command: str) -> tuple[Path, Path]:
    """OUT/claims.md (the command that wrote it, the legend, the table) and OUT/claims.json (every judgment)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = ", ".join(f"{sum(j.verdict == v for j in judgments)} {v}" for v in CLAIM_VERDICTS
                       if any(j.verdict == v for j in judgments))
    legend = (f"Written by `{command}` (`smoe.workbench.claims`) from every comparison with results in {out}: "
              f"{len(judgments)} claim(s), {counts}. difference: mean over seeds of the per-seed paired difference "
              "entry - baseline (in % of the baseline's mean); 95 % CI: Student t over seeds; p: the paired test, "
              "Holm-adjusted over the entries compared with the same baseline; MDD: the smallest |difference| these "
              "seeds detect with 80 % power. supported / contradicted: a resolved difference (p < 0.05) in / against "
              "the claimed direction; not resolved: no evidence either way at these seeds.")
    md, js = out / SUMMARY_MD, out / SUMMARY_JSON
    atomic_write(md, render_markdown([Text(legend), Table(*summary_table(judgments))]).encode())
    atomic_write(js, json.dumps({"command": command, "claims": [j.to_dict() for j in judgments]}, indent=1).encode())
    return md, js


# ---------------------------------------------------------------- the registry: what docs/results.md reproduces

LM = "lm-bbc"
MOMENTUM_ENTRIES = ("residual=topk,momentum=topk+rule=momentum,adam=topk+rule=adam,"
                    "momentum-official=topk+rule=momentum+rule_options.form=official,"
                    "adam-official=topk+rule=adam+rule_options.form=official")
VAE_DATA_ENTRIES = ",".join(f"e{e}-n{n}=topk+model.moe.num_experts={e}+num_per_class={n}"
                            for n in (200, 2000) for e in (3, 8))

for _comparison in (
    Comparison("deepseek", LM, "topk,deepseek,ssr", "topk"),
    Comparison("xmoe", LM, "topk,xmoe", "topk"),
    Comparison("momentum", LM, MOMENTUM_ENTRIES, "residual"),
    Comparison("graph", LM, "topk,similarity,attention", "topk"),
    Comparison("ssr", LM, "topk,topk-noaux=topk:load_balance_coef=0.0,ssr,ssr-p0.1=ssr:p=0.1,"
               "sinkhorn-always=ssr:p=1.0", "topk"),
    Comparison("s2moe", LM, "topk,s2moe,topk-eval1=topk:eval_k=1", "topk"),
    Comparison("usmoe", LM, "topk,expert_choice,usmoe", "topk"),
    Comparison("vmoe-bpr", "digits", "vmoe", "vmoe", corruptions=(), capacities=(0.1, 0.25, 0.5, 0.75, 1.0),
               overrides=("model.moe.capacity_factor=1.05",)),
    Comparison("vae", "sketch-vae", "unsup=topk,sup=topk+supervised=true,unsup-e8=topk+model.moe.num_experts=8",
               "sup"),
    Comparison("vae-data", "sketch-vae", VAE_DATA_ENTRIES, "e3-n2000"),
):
    COMPARISONS.add(_comparison.name, _comparison)

DEEPSEEK = "DeepSeek-V3 (2024); Wang et al. 2024"
XMOE = "Chi et al. 2022 (X-MoE)"
MOMENTUM = "Teo & Nguyen 2024 (MomentumSMoE)"
GRAPH = "Nguyen, Tran, Nguyen, Baraniuk 2025"
SSR = "Nguyen et al. 2025 (SSR)"
USMOE = "Do, Le, Tran 2025 (USMoE)"
VAE = "Nikolic et al. 2025 (SMoE-VAE)"
CONTAMINATED = "robust.substitute@5"  # 40 % of the tokens substituted: stands in for the papers' word-swap attack

for _claim in (
    Claim("deepseek-balance", DEEPSEEK, "the aux-loss-free expert bias balances the experts better than the "
          "load-balancing loss", "deepseek", "routing.load_cv", "deepseek", "better"),
    Claim("deepseek-quality", DEEPSEEK, "balancing by the expert bias instead of an aux loss gives a better model",
          "deepseek", "final.metric", "deepseek", "better"),
    Claim("xmoe-collapse", XMOE, "hypersphere routing avoids representation collapse: the router's inputs keep a "
          "higher effective rank", "xmoe", "routing.effective_rank_input", "xmoe", "higher"),
    Claim("xmoe-consistency", XMOE, "X-MoE routes more consistently: fewer tokens change their top-1 expert between "
          "checkpoints", "xmoe", "fluctuation.top1", "xmoe", "better"),
    *(Claim(f"{rule}-{kind}", MOMENTUM, f"{text} lowers the {kind} perplexity{form}", "momentum",
            "final.metric" if kind == "clean" else CONTAMINATED, rule, "better")
      for rule, text, form, kinds in (
          ("momentum", "heavy-ball momentum across the MoE layers", "", ("clean", "contaminated")),
          ("adam", "AdamSMoE (an Adam step, then momentum)", "", ("clean", "contaminated")),
          ("momentum-official", "heavy-ball momentum", " (the official form, with LayerNorms)", ("contaminated",)),
          ("adam-official", "AdamSMoE", " (the official form, with LayerNorms)", ("contaminated",)))
      for kind in kinds),
    *(Claim(f"{router}-{short}", GRAPH, f"{router}-aware routing lowers the {what} of top-k routing", "graph",
            column, router, direction)
      for router in ("similarity", "attention")
      for short, column, what, direction in (
          ("fluctuation", "fluctuation.top1", "routing fluctuation", "better"),  # lower is better
          ("entropy", "routing.entropy", "entropy of expert selection", "lower"))),
    Claim("ssr-balance", SSR, "selective Sinkhorn balances the experts without an aux loss (against top-k without "
          "one)", "ssr", "routing.load_cv", "ssr", "better", baseline="topk-noaux"),
    Claim("ssr-quality", SSR, "SSR beats softmax top-k with the load-balancing loss", "ssr", "final.metric", "ssr",
          "better"),
    Claim("s2moe-top1", "Do, Le, Tran 2025 (S2MoE)", "S2MoE's training lets a model run one expert per token better "
          "than a top-2 model run at top-1", "s2moe", "final.metric", "s2moe", "better", baseline="topk-eval1"),
    Claim("usmoe-vs-topk", USMOE, "unified competitive routing beats token choice at the same budget", "usmoe",
          "final.metric", "usmoe", "better"),
    Claim("usmoe-vs-expert-choice", USMOE, "unified competitive routing beats expert choice at the same budget",
          "usmoe", "final.metric", "usmoe", "better", baseline="expert_choice"),
    Claim("vmoe-bpr", "Riquelme et al. 2021 (V-MoE)", "at test-time capacity 0.1, Batch Prioritized Routing keeps "
          "more accuracy than dropping by position", "vmoe-bpr", "robust.capacity-bpr@5", "vmoe", "better",
          against="robust.capacity-vanilla@5"),
    Claim("vae-unsupervised", VAE, "an unsupervised gate reconstructs better than the label-supervised one "
          "(5 experts)", "vae", "final.metric", "unsup", "better"),
    Claim("vae-unsupervised-e8", VAE, "an unsupervised gate over 8 experts reconstructs better than the "
          "label-supervised one", "vae", "final.metric", "unsup-e8", "better"),
    Claim("vae-data-more-experts", VAE, "with more data (2,000 per class), 8 experts reconstruct better than 3",
          "vae-data", "final.metric", "e8-n2000", "better"),
    Claim("vae-data-few-examples", VAE, "with little data (200 per class), 8 experts reconstruct worse than 3",
          "vae-data", "final.metric", "e8-n200", "worse", baseline="e3-n200"),
):
    CLAIMS.add(_claim.name, _claim)
