"""What is stored about evaluations, as types: a measure with its 95% interval, the record an evaluation stage of
`prefsmith iterate` keeps, a checkpoint's scores, and the bias report's document (report.json).

The evaluations write these (training/evaluation); `iterate`, the CLI and the UI read them back by attribute.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from configs.errors import NotFoundError
from storage.lineage import set_checkpoint_eval

# (key, label) of what task evaluation measures: shares of problems.
TASK_MEASURES: tuple[tuple[str, str], ...] = (
    ("sampled_accuracy", "sampled accuracy"),
    ("greedy_accuracy", "greedy accuracy"),
    ("answer_ranking", "answer ranking"),
)
# (key, label) of what instruction evaluation measures (IFEval's four figures): shares of prompts whose every
# instruction passes, and shares of all instructions that pass, strictly and loosely.
INSTRUCTION_MEASURES: tuple[tuple[str, str], ...] = (
    ("prompt_strict", "prompt-level strict"),
    ("prompt_loose", "prompt-level loose"),
    ("instruction_strict", "instruction-level strict"),
    ("instruction_loose", "instruction-level loose"),
)
# (key, label) of what bias evaluation measures on held-out occupations: bias in points.
BIAS_MEASURES: tuple[tuple[str, str], ...] = (
    ("bias_overall", "bias overall"),
    ("bias_women", "women"),
    ("bias_white", "White"),
    ("bias_black", "Black"),
    ("bias_asian", "Asian"),
    ("bias_hispanic", "Hispanic or Latino"),
)


@dataclass
class Measure:
    value: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, stored: dict[str, Any]) -> Measure:
        low, high = stored["ci95"]
        return cls(stored["value"], (low, high))


@dataclass
class EvaluationRecord:
    """What an evaluation stage keeps (`iteration_stages`, rounds.json): each measure of the model with its 95%
    interval, what they were measured on, and what a round is compared by.

    Stored flat, as the loop has always stored it: the measures' keys at the top level beside `model`.
    """

    model: str
    measures: tuple[tuple[str, str], ...]
    scores: dict[str, Measure]
    problems: int  # problems, or held-out occupations
    split: str
    # task: per problem, sampled share right, greedy right, gold ranked first (paired comparisons of rounds)
    per_problem: list[list[Any]] | None = None
    perplexity: float | None = None  # bias: on neutral text, the check that training did no damage
    baseline: Measure | None = None  # bias: every occupation given the training occupations' mean share
    seconds: float | None = None

    @property
    def is_task(self) -> bool:
        return self.measures == TASK_MEASURES

    def stored(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model": self.model}
        if not self.is_task:
            data["measures"] = [list(m) for m in self.measures]
        data |= {key: {"value": m.value, "ci95": list(m.ci95)} for key, m in self.scores.items()}
        if self.perplexity is not None:
            data["perplexity"] = self.perplexity
        if self.baseline is not None:
            data["train_mean_baseline"] = {"value": self.baseline.value, "ci95": list(self.baseline.ci95)}
        data |= {"problems": self.problems, "split": self.split}
        if self.per_problem is not None:
            data["per_problem"] = self.per_problem
        if self.seconds is not None:
            data["seconds"] = self.seconds
        return data

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> EvaluationRecord:
        measures = tuple((str(key), str(label)) for key, label in data.get("measures", TASK_MEASURES))
        baseline = data.get("train_mean_baseline")
        return cls(
            model=data["model"],
            measures=measures,
            scores={key: Measure.of(data[key]) for key, _ in measures},
            problems=data["problems"],
            split=data["split"],
            per_problem=data.get("per_problem"),
            perplexity=data.get("perplexity"),
            baseline=None if baseline is None else Measure.of(baseline),
            seconds=data.get("seconds"),
        )


def record_checkpoint_scores(session: Session, checkpoint: str, source: str, record: EvaluationRecord) -> None:
    """Keep `record`'s scores on the registered `checkpoint`, under the source they were measured on."""
    set_checkpoint_eval(session, checkpoint, {source: {key: asdict(m) for key, m in record.scores.items()}})


def checkpoint_scores(stored: dict[str, Any] | None) -> dict[str, dict[str, Measure]]:
    """A checkpoint's `eval` column read back: source → measure key → its value and interval."""
    return {
        source: {key: Measure.of(measure) for key, measure in measures.items()}
        for source, measures in (stored or {}).items()
    }


# ---------------------------------------- the bias report (report.json)


@dataclass(frozen=True)
class BiasScore:
    """Mean |model share − BLS share| over occupations, in percentage points, with a bootstrap CI."""

    value: float
    ci_low: float
    ci_high: float
    n_occupations: int
    confidence: float = 0.95


@dataclass(frozen=True)
class AttributeMetrics:
    attribute: str
    bias: BiasScore
    amplification_slope: float
    ks_statistic: float


@dataclass
class ConditionResult:
    """One model condition measured on the held-out occupations."""

    name: str
    model: str
    in_context_k: int
    shares: dict[str, dict[str, float]]
    metrics: dict[str, AttributeMetrics]
    overall: BiasScore
    perplexity: float | None
    sampled: dict[str, Any] = field(default_factory=dict)  # the sampled gender probe: counts, metrics, examples
    reverse: dict[str, Any] = field(default_factory=dict)  # the reverse probe: occupations named per group
    seconds: float = 0.0


@dataclass
class BiasReport:
    """`prefsmith eval bias`'s report.json: every condition measured on the same held-out occupations."""

    labor_table: str
    labor_year: int | None
    held_out_occupations: list[str]
    bls: dict[str, dict[str, float | None]]
    settings: dict[str, Any]
    notes: list[str]
    conditions: list[ConditionResult]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_BIAS_REPORT = TypeAdapter(BiasReport)


def read_bias_report(path: Path) -> BiasReport:
    """A bias report read back from its report.json; NotFoundError for a file that is not one."""
    try:
        return _BIAS_REPORT.validate_python(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        message = " ".join(str(exc).split())
        raise NotFoundError(f"{path.name} cannot be read as a bias report: {message[:300]}") from None
