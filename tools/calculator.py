"""A calculator the policy can call: arithmetic on a whitelisted ``ast``, never ``eval``.

Every operation is bounded before it runs, so hostile input costs microseconds, not memory:
the expression length, the nesting depth, the size of every intermediate result (an exponent is
checked by the number of digits it would produce, before Python computes it) and a wall-clock
deadline checked between nodes.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from dataclasses import dataclass

from agentenv.tools.base import Tool, ToolError


@dataclass(frozen=True)
class CalculatorLimits:
    max_chars: int = 256
    max_depth: int = 32
    # Any intermediate or final value with more decimal digits than this is refused.
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


def _digits(value: int | float) -> float:
    """Decimal digits of |value| (0 for 0), computed without building a string."""
    magnitude = abs(value)
    return math.log10(magnitude) + 1 if magnitude >= 1 else 0.0


class _Evaluator:
    def __init__(self, limits: CalculatorLimits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_s

    def value(self, node: ast.AST, depth: int = 0) -> int | float:
        if depth > self.limits.max_depth:
            raise ToolError(f"expression nested deeper than {self.limits.max_depth} levels")
        if time.monotonic() > self.deadline:
            raise ToolError(f"took longer than {self.limits.timeout_s} s")
        result = self._value(node, depth + 1)
        if isinstance(result, float) and not math.isfinite(result):
            raise ToolError("result is not a finite number")
        if _digits(result) > self.limits.max_digits:
            raise ToolError(f"result has more than {self.limits.max_digits} digits")
        return result

    def _value(self, node: ast.AST, depth: int) -> int | float:
        if isinstance(node, ast.Expression):
            return self.value(node.body, depth)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ToolError(f"only numbers are allowed, not {node.value!r}")
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self.value(node.operand, depth))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.value(node.left, depth), self.value(node.right, depth)
            if isinstance(node.op, ast.Pow):
                self._check_power(left, right)
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

    def _check_power(self, base: int | float, exponent: int | float) -> None:
        if isinstance(base, complex) or (base < 0 and not float(exponent).is_integer()):
            raise ToolError("fractional power of a negative number")
        if base == 0 and exponent < 0:
            raise ToolError("division by zero")
        # log10(|base| ** exponent) = exponent * log10(|base|): refuse before computing it.
        if abs(base) > 1 and exponent * math.log10(abs(base)) > self.limits.max_digits:
            raise ToolError(f"result has more than {self.limits.max_digits} digits")
        if 0 < abs(base) < 1 and exponent < 0 and -exponent * -math.log10(abs(base)) > self.limits.max_digits:
            raise ToolError(f"result has more than {self.limits.max_digits} digits")

    def _call(self, name: str, args: list[int | float]) -> int | float:
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


def _format(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


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
    return _format(_Evaluator(limits).value(tree))


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression, e.g. (1200 - 800) / 4 or sqrt(2) * 10 ** 3.

    Args:
        expression: Numbers with + - * / // % ** and parentheses, and the functions sqrt, log, exp, round, abs, min, max.
    """
    return evaluate(expression)


calculator = Tool.from_function(calculate, name="calculator")
