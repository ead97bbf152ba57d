"""The values the Anyprefer players exchange: the prompt being played, candidates, tool calls, the judge's
ranking, and a player's typed failure. Plain dataclasses: no model, no Ray, no SQL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from storage.vocabulary import Candidate as Candidate  # the players' candidate is the stored one
from tools.base import Evidence, PromptContext
from tools.calculator import CalculatorTool


@dataclass(frozen=True)
class EpisodePrompt:
    """The input x: its id (sha256 of the messages), chat messages, and the metadata its tools need."""

    id: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] != "system")

    def context(self) -> PromptContext:
        return PromptContext(text=self.text, meta=self.meta)


@dataclass(frozen=True)
class ToolCall:
    """One tool run on the input (`candidate` None) or on one candidate, with what it established."""

    tool: str
    candidate: int | None
    arguments: dict[str, Any]
    evidence: Evidence
    # Whether this tool's pass verifies a candidate (`JudgeTool.verifies`: the final answer's check, tests); a
    # finished completion or true steps are required of a verified answer but verify nothing alone.
    verifies: bool = True


@dataclass(frozen=True)
class ScoredCandidate:
    """The judge's view of one candidate. `final_score` orders candidates: a verified pass (+10) or fail
    (-10) from a tool outweighs any opinion of the judge (1–10)."""

    index: int
    judge_score: float | None
    rationale: str
    verified: bool | None
    final_score: float


@dataclass(frozen=True)
class Ranking:
    scored: list[ScoredCandidate]
    method: str
    raw: str | None = None
    attempts: int = 1

    def best_and_worst(self) -> tuple[ScoredCandidate, ScoredCandidate]:
        """(chosen, rejected): the first best and the last worst, so equal scores never pick one candidate twice."""
        best = max(self.scored, key=lambda s: s.final_score)
        worst = min(reversed(self.scored), key=lambda s: s.final_score)
        return best, worst


@dataclass(frozen=True)
class PlayerFailure:
    """A player produced nothing usable: a backend error, or output that never parsed. `raw` keeps every
    attempt's text for later inspection."""

    role: str
    reason: str
    raw: list[str] = field(default_factory=list)


T = TypeVar("T")


@dataclass(frozen=True)
class Graded(Generic[T]):
    """A structured answer with the model's raw text beside it."""

    value: T
    raw: str
    attempts: int = 1


def verdict_of(calls: list[ToolCall], index: int) -> bool | None:
    """A candidate's verifiable verdict: failed if any check fails it (it did not finish, its answer is wrong,
    a step is false); passed if none does and a check whose pass verifies (`ToolCall.verifies`) passed it;
    else none. True steps of a finished answer verify nothing alone."""
    verdicts = [c for c in calls if c.candidate == index and c.evidence.verdict is not None]
    if any(c.evidence.verdict is False for c in verdicts):
        return False
    if any(c.evidence.verdict and c.verifies for c in verdicts):
        return True
    return None


# Where a family's committed final form ends, by the `task` its prompts' metadata name: a candidate may stop
# right after it (`game.stop_at_final_answer`). Arithmetic asks for "The answer is N."; the pattern ends after
# that sentence's period, not at a decimal point.
FINAL_FORM_STOPS: dict[str, list[str]] = {
    "arithmetic": [r"[Tt]he (?:final )?answer is:? *\**-?\$?\d[\d,]*(?:\.\d+)?\**\.(?!\d)"],
}


def steps_checked(prompt: EpisodePrompt) -> bool:
    """Whether the calculator checks the steps of `prompt`'s candidates (its own rule: arithmetic answers)."""
    return CalculatorTool().arguments_for(prompt.context(), "") is not None


def final_form_stops(prompt: EpisodePrompt) -> list[str]:
    """The stop patterns (regular expressions, the match kept) of `prompt`'s family; none when it has none."""
    return list(FINAL_FORM_STOPS.get(str(prompt.meta.get("task", "")), []))


def derived_seed(*parts: object) -> int:
    """A 31-bit seed from stable parts (run seed, prompt id, round): reproducible whatever the schedule."""
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
