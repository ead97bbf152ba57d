"""The calculator tool: safe arithmetic on a parsed expression tree (never `eval`), and a check of a
candidate's answer against the value of the expression its prompt poses.

Every call is bounded before it computes: exponents, rounding digits and the size of every intermediate
value are capped, so no expression can take more than milliseconds or more than a few kB of memory; a
result that is not a finite real number (exp(1000), 1e308 * 10, (-8) ** 0.5) is an error, never a value.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from fractions import Fraction
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from tools.answers import final_number
from tools.base import Evidence, JudgeTool, PromptContext

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "floor": math.floor,
    "ceil": math.ceil, "log": math.log, "exp": math.exp,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000
MAX_LENGTH = 500
MAX_DIGITS = 10_000
MAX_ROUND_DIGITS = 1000
# log2(10) * MAX_DIGITS: the bit length past which a numerator or denominator has too many digits.
_MAX_BITS = 33_220


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or too large to evaluate safely."""


def evaluate(expression: str) -> Fraction | float:
    """Value of an arithmetic expression: numbers, + - * / // % **, parentheses, a few math functions.

    Exact (Fraction) where possible; anything else in the tree (names, attributes, calls of other
    functions, comprehensions) is rejected before evaluation.
    """
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {exc.msg}") from None
    return _eval(tree.body)


def _log10(value: Fraction | float) -> float:
    if isinstance(value, Fraction):  # math.log10 takes arbitrarily large ints, not Fractions
        return math.log10(value.numerator) - math.log10(value.denominator)
    return math.log10(value)


def _bounded(value: object) -> Fraction | float:
    """`value` if it is a finite real number of sane size, else CalculatorError."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = Fraction(value)
    if isinstance(value, Fraction):
        if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
            raise CalculatorError(f"a value would have more than {MAX_DIGITS} digits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("no finite result")
        return value
    raise CalculatorError("no real result")


def _magnitude(value: Fraction | float) -> Fraction | float:
    """abs() with its type kept (typeshed's abs() of a union is `object`)."""
    return -value if value < 0 else value


def _eval(node: ast.AST) -> Fraction | float:
    return _bounded(_eval_node(node))


def _eval_node(node: ast.AST) -> object:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return Fraction(node.value) if isinstance(node.value, int) else node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if _magnitude(right) > MAX_EXPONENT:
                raise CalculatorError(f"exponent {right} is larger than {MAX_EXPONENT}")
            # Bound the result's size before computing it: (10**1000)**1000 would take the process down, and
            # so would (1/10**1000)**-1000.
            if left != 0 and abs(_log10(_magnitude(left))) * _magnitude(right) > MAX_DIGITS:
                raise CalculatorError(f"result would have more than {MAX_DIGITS} digits")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("no finite result") from None
        if isinstance(value, Fraction) and isinstance(node.op, ast.Pow) and not isinstance(right, Fraction):
            return float(value)
        return value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise CalculatorError("keyword arguments are not allowed")
        args = [_eval(arg) for arg in node.args]
        # round(1, 10**9) would compute 10**(10**9): bound the digits before calling it.
        if node.func.id == "round" and len(args) > 1 and _magnitude(args[1]) > MAX_ROUND_DIGITS:
            raise CalculatorError(f"round: more than {MAX_ROUND_DIGITS} digits")
        try:
            result = _FUNCTIONS[node.func.id](*args)
        except OverflowError:
            raise CalculatorError(f"{node.func.id}: no finite result") from None
        except (TypeError, ValueError) as exc:
            raise CalculatorError(f"{node.func.id}: {exc}") from None
        return Fraction(result) if isinstance(result, int) else result
    raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def as_number(value: Fraction | float) -> float | int | str:
    """A JSON-friendly form: an int when whole, a float when one can hold it, else the exact fraction as text
    (a claimed answer of 400 digits with a decimal point fits no float)."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    try:
        return float(value)
    except OverflowError:
        return str(value)


class CalculatorArgs(BaseModel):
    expression: str = Field(description="Arithmetic expression, e.g. '(12 + 7) * 3'.")
    candidate: str | None = Field(None, description="Answer whose final number is checked against the value.")


class CalculatorTool(JudgeTool):
    runs_in_process: ClassVar[bool] = True  # inputs and results are bounded before computing
    name: str = "calculator"
    description: str = "Evaluate an arithmetic expression exactly; optionally check a candidate's final number."
    args_schema: type[BaseModel] = CalculatorArgs

    def _run(self, expression: str, candidate: str | None = None) -> dict[str, Any]:
        try:
            value = evaluate(expression)
        except CalculatorError as exc:
            return Evidence(tool=self.name, ok=False, error=str(exc)).model_dump()
        data: dict[str, Any] = {"expression": expression, "value": as_number(value)}
        if candidate is None:
            return Evidence(tool=self.name, ok=True, summary=f"{expression} = {data['value']}", data=data).model_dump()
        claimed = final_number(candidate)
        data["claimed"] = None if claimed is None else as_number(claimed)
        # Compared exactly as fractions: float(claimed) overflows on an absurd claim, which is simply wrong.
        exact = Fraction(value)
        match = claimed is not None and abs(claimed - exact) <= Fraction(1, 10**9) * max(abs(exact), Fraction(1))
        summary = f"{expression} = {data['value']}; candidate says {data['claimed']}"
        return Evidence(tool=self.name, ok=True, verdict=match, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        expression = prompt.meta.get("expression")
        if not expression or candidate is None:
            return None
        return {"expression": str(expression), "candidate": candidate}
