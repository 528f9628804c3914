"""The verdict rule: a test, a family, a level, an adjustment and optionally a margin, applied as one.

Every entry of a family is compared with its baseline by the per-seed paired differences d = entry - baseline. Each
entry gets one interval for its mean difference: the interval of the test that decides (`Rule.test_for`), drawn at
the level the family's adjustment judged that entry at (`stats.adjust`). Every verdict is read from that interval,
so a verdict and its interval never disagree. In the metric's good direction, with margin delta:

- `better` / `worse`: the interval lies above / below 0;
- `equivalent`: it lies inside (-delta, +delta) (two one-sided tests, TOST, each at half the level);
- `non-inferior` / `non-superior`: its lower bound lies above -delta / its upper bound below +delta;
- `not resolved`: none of these (no evidence either way at these seeds; the MDD says what could still hide).

The first that holds is the verdict, in that order. Columns without a good direction read `higher` / `lower`.
With Bonferroni (the default) the intervals of a family hold simultaneously with probability >= 1 - alpha, so all
its verdicts together are wrong with probability <= alpha. A verdict needs `min_seeds` (3) paired seeds; differences
equal up to float32 round-off count as zero variance (p no lower than the exact floor 2 / 2^n); a seed where one
side diverged (non-finite metric, failed run) stays in the count and rules out every verdict in that side's favour.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

import numpy as np

from smoe.workbench.measure import power as pw
from smoe.workbench.measure.stats import (
    ADJUSTMENTS,
    MAX_EXACT,
    SLACK,
    Adjustment,
    Test,
    adjust,
    interval,
    probability_of_improvement,
    shift_p,
)
from smoe.workbench.numbers import is_finite

ROUND_OFF = 1e-6  # an sd of the differences below this fraction of the metric's size is round-off (float32 and up)
MIN_PATTERNS = 3  # the sign-flip test is used where its level leaves at least this many split patterns
NOT_RESOLVED = "not resolved"
VERDICTS = ("better", "worse", "equivalent", "non-inferior", "non-superior", "higher", "lower", NOT_RESOLVED)

Side = Literal[">", "<"]
Statement = tuple[Side, int]  # (">", -1): lower bound > -delta; ("<", 0): upper bound < 0 (good-direction units)
Outcome = tuple[str, tuple[Statement, ...]]  # a verdict and the statements that make it
K = TypeVar("K", bound=Hashable)


def comparison_outcomes(higher_is_better: bool | None, margin: bool) -> tuple[Outcome, ...]:
    """The verdicts of a comparison, in order of precedence; with a margin the equivalence verdicts follow."""
    if higher_is_better is None:
        return ("higher", ((">", 0),)), ("lower", (("<", 0),))
    out: tuple[Outcome, ...] = (("better", ((">", 0),)), ("worse", (("<", 0),)))
    if margin:
        out += (("equivalent", ((">", -1), ("<", 1))), ("non-inferior", ((">", -1),)),
                ("non-superior", (("<", 1),)))
    return out


@dataclass(frozen=True)
class Margin:
    """The difference that does not matter: `value` in the metric's units, or with `relative` a fraction of the
    baseline's mean over the paired seeds (Margin.parse("2%") = Margin(0.02, relative=True))."""

    value: float
    relative: bool = False

    def __post_init__(self):
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise ValueError(f"margin must be a positive finite number, got {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> Margin:
        """'2%' (of the baseline's mean) or '0.5' (in the metric's units)."""
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(%?)\s*", str(text))
        try:
            value = float(match.group(1)) if match else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"margin must be a positive number, optionally with % (of the baseline), got {text!r}")
        return cls(value / 100, True) if match.group(2) else cls(value)

    def absolute(self, baseline_mean: float | np.ndarray) -> float | np.ndarray:
        """The margin in the metric's units for a baseline of this mean."""
        mean = np.asarray(baseline_mean, dtype=float)
        out = self.value * np.abs(mean) if self.relative else np.full(mean.shape, self.value)
        return float(out) if out.ndim == 0 else out

    def __str__(self) -> str:
        return f"{100 * self.value:g}%" if self.relative else f"{self.value:g}"


@dataclass(frozen=True)
class Rule:
    """How a family of paired comparisons is judged.

    test: "auto" (the exact sign-flip test where its level leaves at least MIN_PATTERNS split patterns and n <=
    MAX_EXACT, else the paired t-test) or "t"; adjustment over the family's m members: "bonferroni" (simultaneous
    intervals), "holm", "bh" (false discovery rate) or "none"; family: its name, reported with each verdict.
    """

    alpha: float = 0.05
    test: Literal["auto", "t"] = "auto"
    adjustment: Adjustment = "bonferroni"
    margin: Margin | None = None
    family: str = "entries"
    min_seeds: int = 3
    power: float = pw.POWER

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if self.test not in ("auto", "t"):
            raise ValueError(f"test must be 'auto' or 't', got {self.test!r}")
        if self.adjustment not in ADJUSTMENTS:
            raise ValueError(f"adjustment must be one of {ADJUSTMENTS}, got {self.adjustment!r}")
        if not isinstance(self.min_seeds, int) or self.min_seeds < 3:
            raise ValueError(f"min_seeds must be an int >= 3 (two seeds cannot support a verdict), got "
                             f"{self.min_seeds!r}")
        if not 0 < self.power < 1:
            raise ValueError(f"power must lie in (0, 1), got {self.power!r}")

    def base_level(self, m: int) -> float:
        """The strictest level a member of a family of m is judged at (the first step of Holm and BH)."""
        return self.alpha if self.adjustment == "none" else self.alpha / max(m, 1)

    def test_for(self, n: int, m: int) -> Test:
        """The test at n paired seeds in a family of m."""
        if self.test == "t" or n > MAX_EXACT:
            return "t"
        patterns = math.floor(self.base_level(m) * SLACK * 2 ** (n - 1))
        return "sign-flip" if patterns >= MIN_PATTERNS else "t"

    def describe(self, m: int) -> str:
        """'Bonferroni over 4 (family entries), alpha 0.05, margin 2%'."""
        name = {"bonferroni": "Bonferroni", "holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no adjustment"}
        margin = f", margin {self.margin}" if self.margin is not None else ""
        return f"{name[self.adjustment]} over {m} (family {self.family}), alpha {self.alpha:g}{margin}"

    def decide(self, values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
        """Verdicts (R, m) for R simulated comparisons values: (R, m + 1, n), row 0 of each the baseline; every
        member is judged on all n seeds (what `workbench.measure.calibration` simulates)."""
        values = np.asarray(values, dtype=float)
        base = values[:, 0]
        members = []
        for i in range(1, values.shape[1]):
            d = values[:, i] - base
            g = d if higher_is_better else -d
            scale = np.abs(values[:, [0, i]]).max(axis=(1, 2))
            delta = None if self.margin is None else self.margin.absolute(base.mean(axis=1))
            members.append(_Member(_collapse(g, scale), delta, comparison_outcomes(higher_is_better,
                                                                                   delta is not None)))
        _, _, _, chosen = _family(members, self)
        names = [np.array([o[0] for o in m.outcomes] + [NOT_RESOLVED]) for m in members]
        return np.stack([names[i][chosen[:, i]] for i in range(len(members))], axis=1)


@dataclass(frozen=True)
class _Member:
    g: np.ndarray  # (R, n) differences in the good direction
    delta: np.ndarray | None  # (R,) margin in the metric's units
    outcomes: tuple[Outcome, ...]
    blocked: frozenset[int] = frozenset()  # outcomes a diverged seed rules out


def _collapse(g: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows whose sd is round-off (<= ROUND_OFF * scale, scale: (R,) size of the metric) replaced by their mean."""
    if g.shape[1] < 2:
        return g
    flat = g.std(axis=1, ddof=1) <= ROUND_OFF * scale
    return np.where(flat[:, None], g.mean(axis=1, keepdims=True), g)


def _statement_p(member: _Member, test: Test) -> dict[Statement, np.ndarray]:
    """(R,) p of each statement the member's open outcomes use: the p of its bound's value, 1 where the mean lies on
    the other side of it (the interval cannot then lie beyond it at any level)."""
    statements = list(dict.fromkeys(s for i, (_, o) in enumerate(member.outcomes) if i not in member.blocked
                                    for s in o))
    if not statements:
        return {}
    rows = member.g.shape[0]
    delta = np.zeros(rows) if member.delta is None else member.delta
    c = np.stack([factor * delta for _, factor in statements], axis=1)
    p = shift_p(member.g, c, test)
    mean = member.g.mean(axis=1, keepdims=True)
    beyond = np.stack([(mean[:, 0] > c[:, j]) if side == ">" else (mean[:, 0] < c[:, j])
                       for j, (side, _) in enumerate(statements)], axis=1)
    return {s: np.where(beyond[:, j], p[:, j], 1.0) for j, s in enumerate(statements)}


def _family(members: Sequence[_Member], rule: Rule) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p, p_adjusted, level, chosen), each (R, m): the raw p of each member's first resolvable verdict, adjusted over
    the family, the level it is judged at, and the index of its verdict in its outcomes (len(outcomes): none)."""
    m, rows = len(members), members[0].g.shape[0] if members else 0
    p_res = np.ones((rows, m))
    outcome_p: list[list[np.ndarray | None]] = []
    for i, member in enumerate(members):
        n = member.g.shape[1]
        by = _statement_p(member, rule.test_for(n, m)) if n >= rule.min_seeds else {}
        ps = [None if j in member.blocked or not by else np.max([by[s] for s in o], axis=0)
              for j, (_, o) in enumerate(member.outcomes)]
        outcome_p.append(ps)
        if any(p is not None for p in ps):
            p_res[:, i] = np.min([p for p in ps if p is not None], axis=0)
    p_adj, level = adjust(p_res, rule.alpha, rule.adjustment)
    chosen = np.empty((rows, m), dtype=int)
    for i, ps in enumerate(outcome_p):
        pick = np.full(rows, len(ps))
        for j in reversed(range(len(ps))):
            if ps[j] is not None:
                pick = np.where(ps[j] <= level[:, i] * SLACK, j, pick)
        chosen[:, i] = np.where(p_adj[:, i] <= rule.alpha * SLACK, pick, len(ps))
    return p_res, p_adj, level, chosen


@dataclass(frozen=True)
class Pair:
    """One member of a family: per-seed values of the entry and the baseline, paired by position (same seed).

    None: no run at that seed (the pair is left out); nan or inf: the run diverged or failed (the pair stays in the
    count and rules out the verdicts in that side's favour). higher_is_better None: a column without a good side.
    outcomes: the verdicts to read (None: `comparison_outcomes`); a claim passes its own (supported / contradicted).
    margin: this member's own margin (None: the rule's), for a family whose members have different units.
    """

    entry: Sequence[float | None]
    baseline: Sequence[float | None]
    higher_is_better: bool | None = True
    outcomes: tuple[Outcome, ...] | None = None
    margin: Margin | None = None

    def __post_init__(self):
        if len(self.entry) != len(self.baseline):
            raise ValueError(f"entry and baseline must hold one value per seed each, got {len(self.entry)} and "
                             f"{len(self.baseline)}")


@dataclass(frozen=True)
class PairedResult:
    """One member's verdict and the numbers behind it; differences are entry - baseline over the n paired seeds
    where both finished with a finite value; the interval is at confidence 1 - level (two-sided)."""

    n: int
    differences: tuple[float, ...]
    mean: float
    sd: float
    test: Test
    p_value: float  # raw p of the first verdict the data could resolve (of "no difference" without a margin)
    p_adjusted: float
    level: float
    ci_low: float
    ci_high: float
    verdict: str
    family: str
    family_size: int
    adjustment: str
    alpha: float
    margin: float | None  # in the metric's units
    margin_spec: str | None  # as given: "2%" or "0.5"
    d_z: float  # mean / sd of the differences; nan when the sd is zero or round-off
    relative: float  # mean in % of the baseline's mean over the paired seeds
    prob_improvement: float  # share of paired seeds (diverged ones included) where the entry is better
    prob_improvement_low: float  # 95 % percentile bootstrap over seeds
    prob_improvement_high: float
    diverged: tuple[int, ...]  # positions (seeds) where the entry diverged
    baseline_diverged: tuple[int, ...]
    mdd: float  # smallest difference the rule resolves with 80 % power at these n and sd
    seeds_needed: int | None  # seeds at which the rule resolves the observed difference with 80 % power
    note: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict: nan and inf -> None, tuples -> lists."""
        out: dict[str, object] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _prepare(pair: Pair, rule: Rule) -> tuple[_Member, dict]:
    """The member to judge and what the result reports besides the verdict."""
    kept = [(i, e, b) for i, (e, b) in enumerate(zip(pair.entry, pair.baseline)) if e is not None and b is not None]
    diverged = tuple(i for i, e, _ in kept if not is_finite(e))
    baseline_diverged = tuple(i for i, _, b in kept if not is_finite(b))
    finite = [(float(e), float(b)) for _, e, b in kept if is_finite(e) and is_finite(b)]
    d = np.array([e - b for e, b in finite])
    sign = -1.0 if pair.higher_is_better is False else 1.0
    base_mean = float(np.mean([b for _, b in finite])) if finite else math.nan
    scale = max((max(abs(e), abs(b)) for e, b in finite), default=0.0)
    margin = pair.margin or rule.margin
    use_margin = margin is not None and pair.higher_is_better is not None
    delta = float(margin.absolute(base_mean)) if use_margin else None
    outcomes = pair.outcomes or comparison_outcomes(pair.higher_is_better, use_margin)
    only_entry, only_base = set(diverged) - set(baseline_diverged), set(baseline_diverged) - set(diverged)
    blocked = frozenset(j for j, (_, statements) in enumerate(outcomes) for side, _ in statements
                        if (pair.higher_is_better is None and (only_entry or only_base))
                        or (side == ">" and only_entry) or (side == "<" and only_base))
    g = _collapse(sign * d[None, :], np.array([scale]))
    member = _Member(g, None if delta is None else np.array([delta]), outcomes, blocked)
    scores = [sign * x for x in d] + [-math.inf] * len(only_entry) + [math.inf] * len(only_base)
    scores += [math.nan] * (len(set(diverged) & set(baseline_diverged)))
    info = {"d": d, "sign": sign, "base_mean": base_mean, "delta": delta, "margin": margin, "diverged": diverged,
            "baseline_diverged": baseline_diverged, "scores": scores, "paired": len(kept),
            "flat": d.size >= 2 and g.std() == 0}
    return member, info


def _note(n: int, info: dict, rule: Rule) -> str:
    notes = []
    if n < rule.min_seeds:
        notes.append(f"fewer than {rule.min_seeds} paired seeds")
    if info["diverged"]:
        notes.append(f"diverged {len(info['diverged'])} of {info['paired']}")
    if info["baseline_diverged"]:
        notes.append(f"baseline diverged {len(info['baseline_diverged'])} of {info['paired']}")
    if info["flat"] and n >= rule.min_seeds:
        notes.append("zero variance: p no lower than the exact floor")
    return "; ".join(notes)


def judge(pairs: Mapping[K, Pair], rule: Rule = Rule()) -> dict[K, PairedResult]:
    """The verdict of every member of one family (adjusted over all of them), in the order given."""
    prepared = {key: _prepare(pair, rule) for key, pair in pairs.items()}
    members = [member for member, _ in prepared.values()]
    m = len(members)
    if m == 0:
        return {}
    p_res, p_adj, level, chosen = _family(members, rule)
    out = {}
    for i, (key, (member, info)) in enumerate(prepared.items()):
        d, sign, n = info["d"], info["sign"], info["d"].size
        test = rule.test_for(max(n, 1), m)
        low, high = (interval(member.g, level[:, i], test) if n >= rule.min_seeds else (np.array([-np.inf]),
                                                                                         np.array([np.inf])))
        low, high = (low[0], high[0]) if sign > 0 else (-high[0], -low[0])
        names = [o[0] for o in member.outcomes] + [NOT_RESOLVED]
        mean = float(d.mean()) if n else math.nan
        sd = float(d.std(ddof=1)) if n >= 2 else math.nan
        flat_sd = float(member.g.std(ddof=1)) if n >= 2 else math.nan
        base = rule.base_level(m)
        mdd = pw.mdd(test, n, base, rule.power) * flat_sd if n >= rule.min_seeds else math.nan
        needed = None
        if n >= 2:
            effect = abs(mean) / flat_sd if flat_sd > 0 else (math.inf if mean != 0 else 0.0)
            margin = None if info["delta"] is None else (info["delta"] / flat_sd if flat_sd > 0 else math.inf)
            needed = pw.seeds_needed(effect, base, lambda k: rule.test_for(k, m), margin, rule.min_seeds, rule.power)
        pi = probability_of_improvement(info["scores"]) if info["scores"] else (math.nan,) * 3
        out[key] = PairedResult(
            n=n, differences=tuple(d.tolist()), mean=mean, sd=sd, test=test, p_value=float(p_res[0, i]),
            p_adjusted=float(p_adj[0, i]), level=float(level[0, i]), ci_low=float(low), ci_high=float(high),
            verdict=names[chosen[0, i]], family=rule.family, family_size=m, adjustment=rule.adjustment,
            alpha=rule.alpha, margin=info["delta"], margin_spec=None if info["delta"] is None else str(info["margin"]),
            d_z=mean / flat_sd if flat_sd > 0 else math.nan,
            relative=100 * mean / abs(info["base_mean"]) if info["base_mean"] else math.nan,
            prob_improvement=pi[0], prob_improvement_low=pi[1], prob_improvement_high=pi[2],
            diverged=info["diverged"], baseline_diverged=info["baseline_diverged"], mdd=mdd,
            seeds_needed=needed, note=_note(n, info, rule))
    return out


def paired(entry: Sequence[float | None], baseline: Sequence[float | None], higher_is_better: bool | None = True,
           rule: Rule = Rule()) -> PairedResult:
    """One entry against the baseline, a family of one; values of shape (seeds,), paired by position."""
    return judge({0: Pair(entry, baseline, higher_is_better)}, rule)[0]


def compare_all(values: Mapping[str, Sequence[float | None]], baseline: str, higher_is_better: bool | None = True,
                rule: Rule = Rule()) -> dict[str, PairedResult]:
    """Every label but `baseline` against it, one family (values: label -> per-seed values, shape (seeds,))."""
    if baseline not in values:
        raise ValueError(f"baseline must be one of {list(values)}, got {baseline!r}")
    return judge({label: Pair(v, values[baseline], higher_is_better) for label, v in values.items()
                  if label != baseline}, rule)
