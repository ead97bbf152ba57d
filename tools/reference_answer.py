"""The reference-answer tool: the one check of a candidate's final answer against the gold answer its prompt
carries (or the value of the expression it poses). Numeric answers are read strictly (tools.answers.committed_answer)
and compared with math-verify; multiple-choice (letter) and exact (normalised text) matching beside them.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from tools.answers import as_fraction, committed_answer, final_choice, normalise, same_value
from tools.base import Evidence, JudgeTool, PromptContext
from tools.calculator import CalculatorError, as_number, evaluate

CHECK = "final answer"


class ReferenceAnswerArgs(BaseModel):
    candidate: str = Field(description="The answer to check.")
    gold: str = Field(description="The reference answer.")
    kind: Literal["numeric", "multiple_choice", "exact"] = Field("numeric", description="How to compare.")
    tolerance: float = Field(1e-6, ge=0, description="Relative tolerance of numeric matching.")


def _within(gold: str, claimed: str, tolerance: float) -> bool:
    """Both plain numbers within `tolerance` of each other, exactly (math-verify compares to a fixed number of
    digits and has no relative tolerance; a claim of 400 digits is a wrong answer, not a float overflow)."""
    expected, value = as_fraction(gold), as_fraction(claimed)
    if expected is None or value is None:
        return False
    return abs(value - expected) <= Fraction(tolerance) * max(abs(expected), Fraction(1))


def _numeric_match(candidate: str, gold: str, tolerance: float) -> tuple[bool, str, dict[str, Any]]:
    committed = committed_answer(candidate)
    data: dict[str, Any] = {"check": CHECK, "expected": gold, "claimed": committed.answer, "form": committed.form}
    if committed.answer is None:
        data["problem"] = committed.problem
        return False, f"no final answer: {committed.problem}", data
    match = same_value(gold, committed.answer) or _within(gold, committed.answer, tolerance)
    verb = "matches" if match else "does not match"
    return match, f"final answer {committed.answer} ({committed.form}) {verb} the reference ({gold})", data


class ReferenceAnswerTool(JudgeTool):
    runs_in_process: ClassVar[bool] = True
    name: str = "reference_answer"
    description: str = (
        "Compare a candidate's final answer with the gold answer (numeric, multiple-choice letter, or exact text)."
    )
    args_schema: type[BaseModel] = ReferenceAnswerArgs

    def _run(self, candidate: str, gold: str, kind: str = "numeric", tolerance: float = 1e-6) -> dict[str, Any]:
        if kind == "numeric":
            match, summary, data = _numeric_match(candidate, gold.strip(), tolerance)
        else:
            if kind == "multiple_choice":
                claimed, expected = final_choice(candidate), final_choice(gold) or gold.strip().upper()
                match = claimed == expected
                data = {"check": CHECK, "expected": expected, "claimed": claimed}
            else:
                expected, claimed = normalise(gold), normalise(candidate)
                match = claimed == expected or (bool(expected) and f" {expected} " in f" {claimed} ")
                data = {"check": CHECK, "expected": expected, "claimed": claimed[:200]}
            summary = f"{'matches' if match else 'does not match'} the reference ({data['expected']})"
        return Evidence(tool=self.name, ok=True, verdict=match, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        if candidate is None:
            return None
        if "answer" in prompt.meta:
            gold = str(prompt.meta["answer"])
        elif prompt.meta.get("expression"):
            # A prompt that poses an expression and carries no answer: its value is the gold answer.
            try:
                gold = str(as_number(evaluate(str(prompt.meta["expression"]))))
            except CalculatorError:
                return None
        else:
            return None
        kind = prompt.meta.get("answer_kind", "numeric")
        return {"candidate": candidate, "gold": gold, "kind": kind}
