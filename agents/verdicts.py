"""The structured answers the judge, reward model and prompt optimizer must give, as pydantic models;
backends constrain decoding to their JSON schemas where they can.

Bounds (string lengths, 1–10 scores) keep a small model's answers short enough to finish; fields carry no
descriptions because a repair prompt shows the schema and small models copy descriptions into answers.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model


class CandidateScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rationale: str = Field(max_length=60)
    score: int = Field(ge=1, le=10)


@cache
def ranking_schema(n_candidates: int) -> type[BaseModel]:
    """`{"candidate_1": {rationale, score}, …}` with exactly one entry per candidate, so none is skipped."""
    fields = {f"candidate_{i + 1}": (CandidateScore, ...) for i in range(n_candidates)}
    return create_model("JudgeRanking", __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload]


# The answer schemas carry no docstrings: pydantic would put them in the JSON schema as descriptions.


class RewardVerdict(BaseModel):
    # The reward model's grade of the pair itself: is chosen really better, is the contrast useful?

    model_config = ConfigDict(extra="forbid")

    analysis: str = Field(max_length=80)
    score: int = Field(ge=1, le=10)


class PromptRewrite(BaseModel):
    # A TextGrad-style step: the critique is the gradient, the rewritten prompt the update.

    model_config = ConfigDict(extra="forbid")

    target_critique: str = Field(max_length=60)
    target_prompt: str = Field(min_length=10, max_length=160)
    judge_critique: str = Field(max_length=60)
    judge_prompt: str = Field(min_length=10, max_length=160)


@cache
def tool_choice_schema(names: tuple[str, ...]) -> type[BaseModel]:
    """`{"tools": [...]}` restricted to the names available, for a judge that picks its own tools."""
    literal = Literal[names]  # type: ignore[valid-type]
    return create_model(
        "ToolChoice",
        __config__=ConfigDict(extra="forbid"),
        tools=(list[literal], Field(max_length=len(names))),
    )
