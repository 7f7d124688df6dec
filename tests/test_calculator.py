"""The calculator: arithmetic on a whitelisted AST, bounded, never eval."""

import math

import pytest

from agentenv.tools import ToolError, calculator
from agentenv.tools.calculator import CalculatorLimits, evaluate


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("2 + 3 * 4", "14"),
        ("(1200 - 800) / 4", "100"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
        ("-3 ** 2", "-9"),
        ("2 ** 10", "1024"),
        ("2 ^ 10", "1024"),
        ("6 × 7 − 2 ÷ 2", "41"),
        ("sqrt(16) + abs(-2)", "6"),
        ("round(2.567, 2)", "2.57"),
        ("min(3, 1, 2) + max(4, 5)", "6"),
        ("log(100, 10)", "2"),
        ("exp(0)", "1"),
        ("114394 - 98765", "15629"),
        ("1234567 / 89.5", "13794.04469273743"),
    ],
)
def test_arithmetic(expression, result):
    assert calculator(expression=expression) == result


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9**9", "more than 100 digits"),
        ("10**10**10", "more than 100 digits"),
        ("__import__('os')", "unsupported syntax"),
        ("().__class__", "unsupported syntax"),
        ("(" * 10_000 + "1" + ")" * 10_000, "longer than"),
        ("-" * 100 + "1", "nested deeper"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("x + 1", "name 'x'"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("[1, 2]", "unsupported syntax"),
        ("lambda: 1", "unsupported syntax"),
        ("sqrt(-1)", "undefined"),
        ("log(0)", "undefined"),
        ("exp(1000)", "more than 100 digits"),
        ("round(5, -10**9)", "round() takes at most"),
        ("(-8) ** (1/3)", "fractional power"),
        ("max()", "at least one argument"),
        ("sqrt(1, 2)", "wrong number of arguments"),
        ("1e308 * 10", "more than 100 digits"),
        ("10 ** 99 * 10 ** 99", "more than 100 digits"),
        ("0.1 ** -400", "more than 100 digits"),
        ("1 +", "cannot parse"),
    ],
)
def test_refused_expressions_give_clear_errors(expression, message):
    with pytest.raises(ToolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(expression)
    assert calculator.run({"expression": expression}).ok is False


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        # Integers and decimal literals are exact, and so is what + - * / // % and whole powers
        # make of them: written in full, not rounded to a float's digits.
        ("1411750001*1.5", "2117625001.5"),
        ("12345678901.5", "12345678901.5"),
        ("1e16+1", "10000000000000001"),
        ("0.1 + 0.2", "0.3"),
        ("10 ** 30 / 10 ** 10", "100000000000000000000"),
        ("123456789012345678901234567890.5 - 1", "123456789012345678901234567889.5"),
        ("2 ** -60", "0.000000000000000000867361737988403547205962240695953369140625"),
        ("round(2.675, 2)", "2.68"),
        ("7 % 2.5", "2"),
        ("1_000.25 * 2", "2000.5"),
        # Not a finite decimal, irrational, or too long to write out: the float, as repr writes it.
        ("1 / 3", "0.3333333333333333"),
        ("2 ** 0.5", "1.4142135623730951"),
        ("exp(37)", "1.1719142372802612e+16"),
        ("2 ** -500", "3.054936363499605e-151"),
        # Exact powers whose fractions would pass the digit limit go on as floats.
        ("(1/3) ** 1000000", "0"),
        ("0.5 ** 1e10", "0"),
        ("1e-999999999", "0"),
    ],
)
def test_exact_results_are_written_exactly(expression, result):
    assert evaluate(expression) == result


@pytest.mark.parametrize(
    ("expression", "value"),
    [("1 / 7", 1 / 7), ("123456789 / 1000003", 123456789 / 1000003), ("sqrt(2) * 10 ** 20", math.sqrt(2) * 10**20),
     ("pi", math.pi), ("log(3)", math.log(3))],
)
def test_a_float_result_reads_back_as_the_same_float(expression, value):
    assert float(evaluate(expression)) == value


def test_limits_are_configurable():
    assert evaluate("2 ** 200", CalculatorLimits(max_digits=400)).startswith("16069380442589902755")
    with pytest.raises(ToolError, match="longer than 5"):
        evaluate("1 + 2 + 3", CalculatorLimits(max_chars=5))


def test_calculator_is_a_ready_tool():
    assert calculator.name == "calculator"
    assert calculator.parameters["required"] == ["expression"]
    assert calculator.run({"expression": "1+1"}).text == "2"
