import time

import pytest

from stepdistill.arith import evaluate_arithmetic, values_equal

HOSTILE = [
    "1e300 ** 2",  # OverflowError before the bounds
    "(((9**64)**64)**64)**64",  # did not return in 20 s before the bounds
    "9 ** 9 ** 9",
    "2 ** 64",
    "10 ** 16",
    "(-8) ** 0.5",  # a complex number
    "0.5 ** -60",
    "0 ** -1",
    "1e16 + 1",
    "1e308 * 10",
    "1e999",
    "99999999999999999999 - 99999999999999999998",
    "1" + "0" * 400,
    "(" * 300 + "1" + ")" * 300,
    "-" * 400 + "1",
    "+".join(["1"] * 200),
    "1 " + "* 1 " * 160,
    "(" * 50 + "+".join(["1"] * 70) + ")" * 50,
    "7 % 0",
    "7 // 0.0",
    "__import__('os').system('true')",
    "(1).real",
    "x ** 2",
    "[9] * 10 ** 9",
    "'a' * 10 ** 9",
    "1" * 501,
    "True + 1",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_expressions_fail_fast(text):
    started = time.perf_counter()
    with pytest.raises(ValueError):
        evaluate_arithmetic(text)
    assert not values_equal(text, "1")
    assert not values_equal("1", text)
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize("text, value", [
    ("( 8.0 - 5.0 )", 3.0),
    ("( ( 12.0 * 4.0 ) / 3.0 )", 16.0),
    ("2 ** 10", 1024.0),
    ("2 ** -2", 0.25),
    ("(-8) ** 2", 64.0),
    ("9 ** 0.5", 3.0),
    ("1e15 - 1", 999_999_999_999_999.0),
    ("-1e15", -1e15),
    ("17 % 5 + 17 // 5", 5.0),
    ("+".join(["1"] * 60), 60.0),
])
def test_values_within_the_bounds(text, value):
    started = time.perf_counter()
    assert evaluate_arithmetic(text) == value
    assert time.perf_counter() - started < 0.05


def test_values_equal_compares_by_value():
    assert values_equal("( 8.0 - 5.0 )", "(6 / 2)")
    assert values_equal("0.1 + 0.2", "0.3")
    assert not values_equal("( 8.0 + 5.0 )", "( 8.0 - 5.0 )")
