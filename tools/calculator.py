"""The calculator tool: safe arithmetic on a parsed expression tree (never `eval`), and the check of a
candidate's steps: every arithmetic statement it writes (`6 x 8 = 48`, `a = b = c`) must be true.

Every call is bounded before it computes: exponents, rounding digits and the size of every intermediate
value are capped, so no expression can take more than milliseconds or more than a few kB of memory; a
result that is not a finite real number (exp(1000), 1e308 * 10, (-8) ** 0.5) is an error, never a value.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

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


# An arithmetic statement: expressions of numbers, + - * / ^, x and × as multiplication, ÷, parentheses, joined
# by '='. Numbers are plain or grouped by thousands (1,250); a chain a = b = c says all its sides are equal.
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_TERM = rf"(?:\([ \t]*)*(?:-[ \t]*)?(?:{_NUM})(?:[ \t]*\))*"
# 'x' multiplies only between spaces or digits: in "2x - 3" it is a variable.
_OP = r"(?:[ \t]*(?:\*\*|[-+*/×÷^])[ \t]*|[ \t]+x[ \t]+|(?<=\d)x(?=\d))"
_EXPR = rf"{_TERM}(?:{_OP}{_TERM})*"
_STATEMENT = re.compile(rf"{_EXPR}(?:[ \t]*=[ \t]*{_EXPR})+")
_OPERATOR = re.compile(r"(?<=[\d) \t])[-+*/×x÷^]")
# Operators in words and LaTeX, written as symbols before statements are read.
_SPELLED = [
    (re.compile(r"\\times|\\cdot|·"), " × "), (re.compile(r"\\div"), " ÷ "),
    (re.compile(r"\\frac\{(\d+)\}\{(\d+)\}"), r"(\1/\2)"), (re.compile(r"[$]|\\[()\[\]]"), " "),
    (re.compile(r"(?<=\d) +(?:times|multiplied by) +(?=\d)"), " × "), (re.compile(r"(?<=\d) +plus +(?=\d)"), " + "),
    (re.compile(r"(?<=\d) +minus +(?=\d)"), " - "), (re.compile(r"(?<=\d) +divided by +(?=\d)"), " ÷ "),
    (re.compile("[−–]"), "-"),
]
# A statement whose left side follows one of these words is a part of a larger one ("half of 6 x 8 = 24").
_PARTIAL_AFTER = ("of", "by", "per", "half", "twice", "double", "than")
MAX_STATEMENTS = 50


@dataclass(frozen=True)
class Statement:
    """One arithmetic statement a candidate wrote: its text, the value of each side, whether it holds."""

    text: str
    values: list[Fraction | float]
    holds: bool


def _part_of_more(text: str, start: int, end: int, statement: str) -> bool:
    """Whether the statement found at text[start:end] is a fragment of a larger expression or a word problem
    ("x + 3 = 7", "2 = 5 + y", "50% of 80 = 40"): it is then not checked."""
    before, after = text[:start], text[end:]
    last, following = before[-1:], after[:1]
    if last.isalnum() or last in ("." , "_") or following.isalnum() or following in ("%", "_", "("):
        return True
    left = before.rstrip()
    if left[-1:] in tuple("-+*/×÷^=(%)") or (statement.startswith("-") and left[-1:].isalnum()):
        return True
    if left.split()[-1:] and left.split()[-1].lower() in _PARTIAL_AFTER:
        return True
    return after.lstrip()[:1] in ("-", "+", "*", "/", "×", "÷", "^", "=", "%")


def _holds(left: tuple[str, Fraction | float], right: tuple[str, Fraction | float]) -> bool:
    """Equal, or equal to the digits written when a side is a rounded decimal (10/3 = 3.33)."""
    (_, a), (_, b) = left, right
    if Fraction(a) == Fraction(b):
        return True
    digits = [len(t.split(".")[1]) for t, _ in (left, right) if re.fullmatch(r"\d+\.\d+", t.strip())]
    return bool(digits) and abs(Fraction(a) - Fraction(b)) <= Fraction(1, 2 * 10 ** max(digits))


def _exact(side: str) -> str:
    """`side` as the evaluator reads it exactly: decimals as fractions (3.25 is 325/100, not a float that a
    400-digit decimal overflows), no thousands separators, x as *."""
    side = side.replace(",", "").replace("x", "*")
    return re.sub(r"(\d+)\.(\d+)", lambda m: f"({int(m.group(1) + m.group(2))}/{10 ** len(m.group(2))})", side)


def _statements(text: str) -> Iterator[tuple[Statement, str, int]]:
    """Each checkable statement of `text` in order, with the text as read (operators in words written as
    symbols) and where the statement ends in it."""
    for pattern, replacement in _SPELLED:
        text = pattern.sub(replacement, text)
    found = 0
    for match in _STATEMENT.finditer(text):
        written = match.group(0).strip()
        if not _OPERATOR.search(written) or _part_of_more(text, match.start(), match.end(), written):
            continue
        sides = [side.strip() for side in written.split("=")]
        try:
            values = [evaluate(_exact(side)) for side in sides]
        except CalculatorError:
            continue  # unbalanced parentheses, a division by zero: not a statement that can be checked
        holds = all(_holds((sides[i], values[i]), (sides[i + 1], values[i + 1])) for i in range(len(sides) - 1))
        yield Statement(" ".join(written.split()), values, holds), text, match.end()
        found += 1
        if found == MAX_STATEMENTS:
            return


def statements_in(text: str) -> list[Statement]:
    """Every arithmetic statement in `text` with an operator in it (a bare "3 = 3" says nothing), in order."""
    return [statement for statement, _, _ in _statements(text)]


# What settles a statement: a whole word after it (two letters or more and the character after them, not an
# operator spelled out), after at most a punctuation mark and blank space. No continuation of the text can then
# extend the statement, make it a part of a larger one, or change its sides.
_SETTLED_BY = re.compile(
    r"[ \t]*(?:[.,;:!?][ \t]*)?\n*[ \t]*"
    r"(?!(?:times|multiplied|plus|minus|divided)[^A-Za-z])[A-Za-z]{2,}[^A-Za-z]"
)


def settled_false_step(text: str) -> str | None:
    """The shortest start of `text` that settles a false statement (see `_SETTLED_BY`), without the letters that
    settle it: whatever a writer adds to that start, the steps check fails. None when `text` has no such statement.
    A candidate may be ended there (`game.abandon_false_steps`): the tokens after it could not make it pass."""
    first = next(
        (s for s, read, end in _statements(text) if not s.holds and _SETTLED_BY.match(read, end)), None
    )
    if first is None:
        return None
    # the shortest prefix that settles it, found on the text as written (operators in words change its length)
    low, high = 1, len(text)
    while low < high:
        middle = (low + high) // 2
        if _settles(text[:middle], first):
            high = middle
        else:
            low = middle + 1
    return text[: low - 1].rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz").rstrip()


def _settles(prefix: str, statement: Statement) -> bool:
    return any(s == statement and _SETTLED_BY.match(read, end) for s, read, end in _statements(prefix))


class CalculatorArgs(BaseModel):
    expression: str | None = Field(None, description="Arithmetic expression to evaluate, e.g. '(12 + 7) * 3'.")
    candidate: str | None = Field(None, description="Answer whose arithmetic statements are all checked.")

    @model_validator(mode="after")
    def _something_to_do(self) -> CalculatorArgs:
        if self.expression is None and self.candidate is None:
            raise ValueError("give 'expression' (to evaluate) or 'candidate' (to check its arithmetic)")
        return self


CHECK = "steps"


class CalculatorTool(JudgeTool):
    runs_in_process: ClassVar[bool] = True  # inputs and results are bounded before computing
    verifies: ClassVar[bool] = False  # true steps are required of a verified answer, and prove nothing alone
    name: str = "calculator"
    description: str = (
        "Evaluate an arithmetic expression exactly; or check every arithmetic statement (a op b = c) a candidate "
        "writes."
    )
    args_schema: type[BaseModel] = CalculatorArgs

    def _run(self, expression: str | None = None, candidate: str | None = None) -> dict[str, Any]:
        if candidate is not None:
            return self._steps(candidate)
        try:
            value = evaluate(str(expression))
        except CalculatorError as exc:
            return Evidence(tool=self.name, ok=False, error=str(exc)).model_dump()
        data: dict[str, Any] = {"expression": expression, "value": as_number(value)}
        return Evidence(tool=self.name, ok=True, summary=f"{expression} = {data['value']}", data=data).model_dump()

    def _steps(self, candidate: str) -> dict[str, Any]:
        statements = statements_in(candidate)
        data: dict[str, Any] = {
            "check": CHECK,
            "statements": [
                {"statement": s.text, "values": [as_number(v) for v in s.values], "holds": s.holds}
                for s in statements
            ],
        }
        if not statements:
            summary = "no arithmetic statements to check"
            return Evidence(tool=self.name, ok=True, summary=summary, data=data).model_dump()
        false = [s for s in statements if not s.holds]
        if false:
            shown = "; ".join(f"{s.text} (sides: {', '.join(str(as_number(v)) for v in s.values)})" for s in false[:3])
            summary = f"{len(false)} of {len(statements)} arithmetic statements false: {shown}"
        else:
            summary = f"all {len(statements)} arithmetic statements hold"
        return Evidence(tool=self.name, ok=True, verdict=not false, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        """Applies to the answers of arithmetic problems: prompts posing an expression or with a numeric answer."""
        numeric = "answer" in prompt.meta and prompt.meta.get("answer_kind", "numeric") == "numeric"
        if candidate is None or not (prompt.meta.get("expression") or numeric):
            return None
        return {"candidate": candidate}
