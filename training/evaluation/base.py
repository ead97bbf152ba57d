"""What every evaluation shares: the plan of what it measures (task problems, or the BLS table's occupations), and
the one method a loop calls to measure a model, write its report and get back the record that is stored about it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Literal

from configs.errors import PrefsmithError
from storage.evaluations import EvaluationRecord, Measure

# `task`: problems with gold answers (`prefsmith eval task`); `bias`: occupational bias against the BLS table
# (`prefsmith eval bias`).
EvalKind = Literal["task", "bias"]


class EvalError(PrefsmithError):
    """The evaluation cannot run on what it was given (no gold answers, an unknown source)."""


@dataclass(frozen=True)
class Problem:
    id: str
    messages: list[dict[str, str]]
    question: str
    gold: Fraction


@dataclass(frozen=True)
class ProblemSet:
    """The problems of one source (pipelines.prompt_sources.load_problems) and the split they come from."""

    source: str
    split: str
    problems: list[Problem]


@dataclass(frozen=True)
class EvalSettings:
    """How task evaluation samples and scores answers."""

    samples: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 64
    seed: int = 0
    batch_size: int = 16


@dataclass(frozen=True)
class EvalPlan:
    """What an evaluation measures every model on, the same each time: the task's problems (loaded by `problems`,
    since prompt sources are read by the pipelines) or the BLS table's held-out occupations, at most `limit`."""

    prompts: str = "builtin:arithmetic"
    problems: Callable[[], ProblemSet] | None = None
    labor_table: str | None = None
    limit: int | None = 50
    settings: EvalSettings = field(default_factory=EvalSettings)
    min_employed: int = 100  # bias: occupations with fewer employed (thousands) are not probed


class Evaluation(ABC):
    """One way of measuring a model; `run` measures it, writes the report into a folder and returns the record."""

    kind: ClassVar[EvalKind]
    ylabel: ClassVar[str]  # what the measures' values are, for plots
    digits: ClassVar[int]  # decimals a table shows them with

    def __init__(self, plan: EvalPlan, progress: Callable[[str, int, int], None] | None = None) -> None:
        self.plan = plan
        self.progress = progress  # (stage, done, total), for an evaluation that reports how far it is

    @property
    @abstractmethod
    def source(self) -> str:
        """What the models are measured on (the prompts, the labor table), which their scores are kept under."""

    @abstractmethod
    def run(self, model: str, out: Path) -> EvaluationRecord:
        """Measure `model`, write the report into `out` (replacing one there), return what is stored about it."""


class MeasuredReport(ABC):
    """A report whose figures are `Measure` fields named by `MEASURES` (TaskReport, InstructionReport): written
    whole as JSON, and kept by a loop as the same record: the figures, what they were measured on, and per problem
    what paired comparisons of rounds resample. Subclasses are dataclasses with `model`, `split`, `problems` and
    `seconds` fields."""

    MEASURES: ClassVar[tuple[tuple[str, str], ...]]
    model: str
    split: str
    problems: int
    seconds: float

    @abstractmethod
    def problem_counts(self) -> list[list[Any]]:
        """Per problem, the outcomes a paired comparison of two rounds resamples."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def measures(self) -> dict[str, Measure]:
        return {key: getattr(self, key) for key, _ in self.MEASURES}

    def record(self) -> EvaluationRecord:
        """What a loop keeps of this report."""
        return EvaluationRecord(
            model=self.model,
            measures=self.MEASURES,
            scores=self.measures(),
            problems=self.problems,
            split=self.split,
            per_problem=self.problem_counts(),
            seconds=self.seconds,
        )
