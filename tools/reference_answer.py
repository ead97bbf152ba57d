"""The reference-answer tool: checks a candidate against the gold answer its prompt carries.

Numeric (tolerance), multiple-choice (letter) and exact (normalised text) matching; a verifiable verdict.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from tools.answers import final_choice, final_number, normalise
from tools.base import Evidence, JudgeTool, PromptContext
from tools.calculator import as_number


class ReferenceAnswerArgs(BaseModel):
    candidate: str = Field(description="The answer to check.")
    gold: str = Field(description="The reference answer.")
    kind: Literal["numeric", "multiple_choice", "exact"] = Field("numeric", description="How to compare.")
    tolerance: float = Field(1e-6, ge=0, description="Relative tolerance of numeric matching.")


def _numeric_match(candidate: str, gold: str, tolerance: float) -> tuple[bool | None, dict[str, Any]]:
    expected = final_number(gold)
    if expected is None:
        raise ValueError(f"gold answer {gold!r} holds no number")
    claimed = final_number(candidate)
    if claimed is None:
        return False, {"expected": as_number(expected), "claimed": None}
    # Exact fractions throughout: a claim of 400 digits is a wrong answer, not a float overflow.
    scale = max(abs(expected), Fraction(1))
    return abs(claimed - expected) <= Fraction(tolerance) * scale, {
        "expected": as_number(expected),
        "claimed": as_number(claimed),
    }


class ReferenceAnswerTool(JudgeTool):
    runs_in_process: ClassVar[bool] = True
    name: str = "reference_answer"
    description: str = (
        "Compare a candidate answer with the gold answer (numeric, multiple-choice letter, or exact text)."
    )
    args_schema: type[BaseModel] = ReferenceAnswerArgs

    def _run(self, candidate: str, gold: str, kind: str = "numeric", tolerance: float = 1e-6) -> dict[str, Any]:
        if kind == "numeric":
            match, data = _numeric_match(candidate, gold, tolerance)
        elif kind == "multiple_choice":
            claimed, expected = final_choice(candidate), final_choice(gold) or gold.strip().upper()
            match, data = claimed == expected, {"expected": expected, "claimed": claimed}
        else:
            expected, claimed = normalise(gold), normalise(candidate)
            match = claimed == expected or (bool(expected) and f" {expected} " in f" {claimed} ")
            data = {"expected": expected, "claimed": claimed[:200]}
        summary = f"{'matches' if match else 'does not match'} the reference ({data['expected']})"
        return Evidence(tool=self.name, ok=True, verdict=match, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        if candidate is None or "answer" not in prompt.meta:
            return None
        kind = prompt.meta.get("answer_kind", "numeric")
        return {"candidate": candidate, "gold": str(prompt.meta["answer"]), "kind": kind}
