"""Numbers in reports: which values count (`is_finite`, `finite_mean`), and one format: a spread rounded to two
significant figures and its mean to the same decimal place ("0.65970 ± 0.00037", "20900 ± 2700"); a lone number to
four significant figures; a shared power of ten when the numbers are very large or very small ("(3.52 ± 0.41)e-05");
"n/a" for None, NaN and infinities; durations in the largest unit that keeps them above 1 ("42 s", "3.5 min",
"12.4 h")."""

from __future__ import annotations

import math
from collections.abc import Iterable

NOT_FINITE = "n/a"
SIGNIFICANT = 4  # figures of a number without a spread
SPREAD_FIGURES = 2  # figures of a spread
LARGE, SMALL = 1e5, 1e-3  # beyond these magnitudes a power of ten is factored out


def is_finite(value: float | None) -> bool:
    """A number that is not None, NaN or infinite."""
    return value is not None and math.isfinite(value)


def finite_mean(values: Iterable[float | None]) -> float | None:
    """The mean of the finite values; None when there are none."""
    found = [v for v in values if is_finite(v)]
    return sum(found) / len(found) if found else None


def _exponent(x: float) -> int:
    return math.floor(math.log10(abs(x)))


def _scientific(size: float) -> bool:
    return size >= LARGE or 0 < size < SMALL


def format_number(x: float | None, signed: bool = False) -> str:
    """x to SIGNIFICANT significant figures (integers below 1e5 in full), with a + before positive numbers when
    `signed`; "n/a" for None, NaN and infinities."""
    if x is None or not math.isfinite(x := float(x)):
        return NOT_FINITE
    sign = "+" if signed and x > 0 else ""
    if x.is_integer() and abs(x) < LARGE:
        return f"{sign}{int(x)}"
    if _scientific(abs(x)):
        return f"{sign}{x:.{SIGNIFICANT - 1}e}"
    decimals = max(SIGNIFICANT - 1 - _exponent(x), 0)
    return f"{sign}{round(x, decimals):.{decimals}f}"


def format_spread(mean: float, spread: float | None) -> str:
    """ "mean ± spread" with the spread to SPREAD_FIGURES significant figures and the mean to the same decimal
    place; `format_number(mean)` without a spread; "mean ± 0" for a spread of 0; "n/a" when either is not finite."""
    if spread is None:
        return format_number(mean)
    if not (math.isfinite(mean) and math.isfinite(spread)):
        return NOT_FINITE
    spread = abs(spread)
    if spread == 0:
        return f"{format_number(mean)} ± 0"
    last = _exponent(spread) - (SPREAD_FIGURES - 1)  # the power of ten of the last shown digit
    spread = round(spread, -last)
    last = _exponent(spread) - (SPREAD_FIGURES - 1)  # rounding may have carried (0.096 -> 0.10)
    if _scientific(max(abs(mean), spread)):
        power = _exponent(mean) if mean else _exponent(spread)
        decimals = max(power - last, 0)
        return f"({mean / 10**power:.{decimals}f} ± {spread / 10**power:.{decimals}f})e{power:+03d}"
    decimals = max(-last, 0)
    return f"{round(mean, -last):.{decimals}f} ± {round(spread, -last):.{decimals}f}"


def format_duration(seconds: float | None) -> str:
    """seconds as "42 s", "3.5 min" or "12.4 h" (one decimal above a minute); "n/a" when not finite or negative."""
    if not is_finite(seconds) or seconds < 0:
        return NOT_FINITE
    if round(seconds) < 60:
        return f"{seconds:.0f} s"
    if round(seconds / 60, 1) < 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
