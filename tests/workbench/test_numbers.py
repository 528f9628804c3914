"""One number format: the spread to two significant figures, the mean to the same decimal place."""

import math

import pytest

from smoe.workbench.numbers import format_duration, format_number, format_spread


@pytest.mark.parametrize("mean, spread, text", [
    (0.6597, 3.652e-4, "0.65970 ± 0.00037"),  # was "0.6597 ± 3.652e-04"
    (122.0, math.sqrt(8), "122.0 ± 2.8"),
    (20926.0, 2675.8, "20900 ± 2700"),  # the mean rounded to the spread's last figure
    (292.32, 11.963, "292 ± 12"),
    (1.0, 0.0996, "1.00 ± 0.10"),  # the spread rounds up to another power of ten
    (3.52e-5, 4.1e-6, "(3.52 ± 0.41)e-05"),  # very small: a shared power of ten
    (123456.0, 2345.0, "(1.235 ± 0.023)e+05"),
    (0.0, 0.01, "0.000 ± 0.010"),
    (2.0, 0.0, "2 ± 0"),
    (0.3, None, "0.3000"),  # no spread: four significant figures
    (130.0, None, "130"),
    (math.nan, 1.0, "n/a"),
    (1.0, math.inf, "n/a"),
])
def test_format_spread(mean, spread, text):
    assert format_spread(mean, spread) == text


def test_format_number():
    assert [format_number(x) for x in (4.85, 0.3, 1234.5, 2.0, -0.5, 0.01)] == [
        "4.850", "0.3000", "1234", "2", "-0.5000", "0.01000"]
    assert format_number(123456.0) == "1.235e+05" and format_number(1.234e-4) == "1.234e-04"
    assert format_number(math.inf) == format_number(-math.inf) == format_number(math.nan) == "n/a"


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (42.4, "42 s"), (59.6, "1.0 min"), (60, "1.0 min"),
                                           (3599, "1.0 h"), (3590, "59.8 min"), (3600, "1.0 h"), (44640, "12.4 h"),
                                           (None, "n/a"), (math.nan, "n/a"), (-1, "n/a")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
