"""The calculator: arithmetic on a whitelisted AST, bounded, never eval."""

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
        ("1234567 / 89.5", "13794.04469"),
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


def test_limits_are_configurable():
    assert evaluate("2 ** 200", CalculatorLimits(max_digits=400)).startswith("16069380442589902755")
    with pytest.raises(ToolError, match="longer than 5"):
        evaluate("1 + 2 + 3", CalculatorLimits(max_chars=5))


def test_calculator_is_a_ready_tool():
    assert calculator.name == "calculator"
    assert calculator.parameters["required"] == ["expression"]
    assert calculator.run({"expression": "1+1"}).text == "2"
