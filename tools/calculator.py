"""A calculator the policy can call: arithmetic on a whitelisted ``ast``, never ``eval``.

Every operation is bounded before it runs, so hostile input costs microseconds, not memory:
the expression length, the nesting depth, the size of every intermediate result (an exponent is
checked by the number of digits it would produce, before Python computes it) and a wall-clock
deadline checked between nodes.

Numbers are exact wherever the expression is: integers and decimal literals are fractions, so
``+ - * / // %`` and integer powers of them are computed without rounding (``1411750001*1.5`` is
2117625001.5, ``1e16+1`` is 10000000000000001). The irrational functions and constants (sqrt, log,
exp, pi, e, fractional powers) give floats, and so does whatever is computed from a float.
``_format`` says how each kind of result is written.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from agentenv.tools.base import Tool, ToolError


@dataclass(frozen=True)
class CalculatorLimits:
    max_chars: int = 256
    max_depth: int = 32
    # Any intermediate or final value with more decimal digits than this is refused; an exact
    # result is printed in full up to this many digits after the decimal point.
    max_digits: int = 100
    # A backstop only: the bounds above keep every expression to microseconds. Generous, so a
    # garbage-collection pause on a loaded machine does not refuse a legitimate expression.
    timeout_s: float = 0.5


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _log(x: float, base: float = math.e) -> float:
    return math.log(x, base)


_FUNCTIONS = {
    "sqrt": math.sqrt,
    "log": _log,
    "ln": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "exp": math.exp,
    "round": round,
    "abs": abs,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}

# Symbols models write that Python spells differently. `^` is power on every pocket calculator.
_SPELLINGS = str.maketrans({"×": "*", "÷": "/", "−": "-", "^": "**", "–": "-"})


# An exact value (a fraction) or an approximate one (a float).
Number = Fraction | float


def _log10(value: Number) -> float:
    """log10(|value|) of a nonzero value, also for fractions too large for a float."""
    if isinstance(value, Fraction):
        return math.log10(abs(value.numerator)) - math.log10(value.denominator)
    return math.log10(abs(value))


def _digits(value: Number) -> float:
    """Decimal digits of |value| (0 for 0), computed without building a string."""
    return _log10(value) + 1 if abs(value) >= 1 else 0.0


def _approximate(value: Number) -> float:
    try:
        return float(value)
    except OverflowError:
        raise ToolError("result is too large") from None


class _Evaluator:
    def __init__(self, limits: CalculatorLimits, source: str):
        self.limits = limits
        self.source = source
        self.deadline = time.monotonic() + limits.timeout_s

    def value(self, node: ast.AST, depth: int = 0) -> Number:
        if depth > self.limits.max_depth:
            raise ToolError(f"expression nested deeper than {self.limits.max_depth} levels")
        if time.monotonic() > self.deadline:
            raise ToolError(f"took longer than {self.limits.timeout_s} s")
        result = self._value(node, depth + 1)
        if isinstance(result, int):  # floor(), round() and // give ints: keep exact values one type
            result = Fraction(result)
        if isinstance(result, float) and not math.isfinite(result):
            raise ToolError("result is not a finite number")
        if _digits(result) > self.limits.max_digits:
            raise ToolError(f"result has more than {self.limits.max_digits} digits")
        if isinstance(result, Fraction) and _digits(result.denominator) > self.limits.max_digits:
            # Past what the result could print exactly: go on in floats, so that no chain of
            # operations can grow the fractions.
            result = _approximate(result)
        return result

    def _value(self, node: ast.AST, depth: int) -> Number | int:
        if isinstance(node, ast.Expression):
            return self.value(node.body, depth)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ToolError(f"only numbers are allowed, not {node.value!r}")
            return self._literal(node)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.value(node.operand, depth))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.value(node.left, depth), self.value(node.right, depth)
            if isinstance(node.op, ast.Pow):
                self._check_power(left, right)
                left = self._power_base(left, right)
            try:
                return _BINARY[type(node.op)](left, right)
            except ZeroDivisionError:
                raise ToolError("division by zero") from None
            except OverflowError:
                raise ToolError("result is too large") from None
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
            if node.keywords:
                raise ToolError("keyword arguments are not supported")
            args = [self.value(arg, depth) for arg in node.args]
            return self._call(node.func.id, args)
        raise ToolError(f"unsupported syntax: {_describe(node)}")

    def _literal(self, node: ast.Constant) -> Number:
        """An integer, or a decimal literal as written (``0.1`` is 1/10, not the float nearest
        it); one whose exponent is past the digit limit stays a float, so that ``1e-999999999``
        does not build a fraction with a billion digits."""
        if isinstance(node.value, int):
            return Fraction(node.value)
        text = ast.get_source_segment(self.source, node)
        decimal = Decimal(text) if text else None
        if decimal is None or not decimal.is_finite() or abs(decimal.as_tuple().exponent) > self.limits.max_digits:
            return node.value
        return Fraction(decimal)

    def _check_power(self, base: Number, exponent: Number) -> None:
        whole = exponent.denominator == 1 if isinstance(exponent, Fraction) else exponent.is_integer()
        if base < 0 and not whole:
            raise ToolError("fractional power of a negative number")
        if base == 0 and exponent < 0:
            raise ToolError("division by zero")
        # log10(|base| ** exponent) = exponent * log10(|base|): refuse before computing it.
        if abs(base) > 1 and _approximate(exponent) * _log10(base) > self.limits.max_digits:
            raise ToolError(f"result has more than {self.limits.max_digits} digits")
        if 0 < abs(base) < 1 and exponent < 0 and -_approximate(exponent) * -_log10(base) > self.limits.max_digits:
            raise ToolError(f"result has more than {self.limits.max_digits} digits")

    def _power_base(self, base: Number, exponent: Number) -> Number:
        """``base``, or its float where the exact power's numerator or denominator would pass the
        digit limit: ``(1/3) ** 10**6`` is a denominator of half a million digits, but the float is 0."""
        if isinstance(base, Fraction) and isinstance(exponent, Fraction) and exponent.denominator == 1 and base:
            largest = max(abs(base.numerator), base.denominator)
            if abs(exponent.numerator) * math.log10(largest) > self.limits.max_digits:
                return _approximate(base)
        return base

    def _call(self, name: str, args: list[Number]) -> Number | int:
        # Python's round() and math functions take a whole number's ndigits as an int.
        args = [int(arg) if isinstance(arg, Fraction) and arg.denominator == 1 else arg for arg in args]
        if name in ("min", "max") and not args:
            raise ToolError(f"{name}() needs at least one argument")
        # round(5, -10**9) would build 10**(10**9) inside Python before returning.
        if name == "round" and len(args) == 2 and abs(args[1]) > self.limits.max_digits:
            raise ToolError(f"round() takes at most {self.limits.max_digits} digits")
        if name == "exp" and args and args[0] > 230:
            raise ToolError(f"result has more than {self.limits.max_digits} digits")
        try:
            return _FUNCTIONS[name](*args)
        except TypeError:
            raise ToolError(f"wrong number of arguments for {name}()") from None
        except (ValueError, ZeroDivisionError):
            raise ToolError(f"{name}() is undefined for {', '.join(map(_format, args))}") from None
        except OverflowError:
            raise ToolError("result is too large") from None


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"name {node.id!r} (functions: {', '.join(_FUNCTIONS)}; constants: pi, e)"
    if isinstance(node, ast.Call):
        return "call of an unknown function"
    return type(node).__name__


def _format(value: Number | int, max_places: int = CalculatorLimits.max_digits) -> str:
    """How a result is written: an exact integer in full; an exact decimal in full when it has at
    most ``max_places`` digits after the point; anything else (1/3, sqrt(2), a longer decimal) as
    the shortest text that reads back as the same float (``repr``), a whole float below 2**53
    without its ``.0``."""
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return str(value.numerator)
        decimal = _finite_decimal(value, max_places)
        if decimal is not None:
            return decimal
        value = _approximate(value)
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _finite_decimal(value: Fraction, max_places: int) -> str | None:
    """``value`` written out in decimal, if that ends within ``max_places`` digits after the point."""
    rest, twos, fives = value.denominator, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    places = max(twos, fives)
    if rest != 1 or places > max_places:
        return None
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def evaluate(expression: str, limits: CalculatorLimits = CalculatorLimits()) -> str:
    """Evaluate an arithmetic expression and format the result; raise ToolError if refused."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("empty expression")
    if len(expression) > limits.max_chars:
        raise ToolError(f"expression longer than {limits.max_chars} characters")
    source = expression.strip().translate(_SPELLINGS)
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ToolError(f"cannot parse {expression.strip()!r} as arithmetic") from None
    return _format(_Evaluator(limits, source).value(tree), limits.max_digits)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. (1200 - 800) / 4 or sqrt(2) * 10 ** 3.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, and the functions sqrt, log, exp, round, abs, min, max.
    """
    return evaluate(expression)


calculator = Tool.from_function(calculate, name="calculator")
