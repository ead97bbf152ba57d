"""Instruction-following evaluation (`prefsmith eval task` on IFEval-format prompts): IFEval's four figures of
a model's greedy answers, with bootstrap 95% intervals over prompts, and a table per instruction type.

- prompt-level strict / loose: the share of prompts whose every instruction passes;
- instruction-level strict / loose: the share of all instructions that pass (IFEval's micro average).

Pass and fail come from tools/instruction_checks.py, the checks that give synthesis its verdicts (the
`if-verifiable` package's IFEval and IFBench checkers, loose = any of IFEval's loose transformations passes).
An instruction-level interval resamples prompts, not instructions: a prompt's instructions share one answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from storage.evaluations import INSTRUCTION_MEASURES, EvaluationRecord, Measure
from storage.folders import folder_written_whole
from tools.instruction_checks import check_instructions
from training.evaluation.base import EvalError, EvalKind, Evaluation, MeasuredReport
from training.evaluation.generation import GenerationBackend, greedy_answers
from training.evaluation.task import BOOTSTRAP_REPS

DEFAULT_MAX_TOKENS = 512  # IFEval's prompts ask for paragraphs, sections and word counts in the hundreds


@dataclass(frozen=True)
class InstructionPrompt:
    id: str
    messages: list[dict[str, str]]
    prompt: str  # the user's text, which checkers that compare with the prompt read
    instruction_ids: list[str]
    kwargs: list[dict[str, Any]]


@dataclass(frozen=True)
class InstructionSet:
    """The instruction prompts of one source (pipelines.prompt_sources.load_instruction_set) and their split."""

    source: str
    split: str
    prompts: list[InstructionPrompt]


@dataclass
class PromptResult:
    id: str
    prompt: str
    response: str
    finish_reason: str
    instructions: list[dict[str, Any]]  # per instruction: id, kwargs, strict, loose (check_instructions)

    @property
    def strict(self) -> bool:
        return all(i["strict"] for i in self.instructions)

    @property
    def loose(self) -> bool:
        return all(i["loose"] for i in self.instructions)


@dataclass
class TypeRow:
    type: str
    n: int
    strict: float
    loose: float


@dataclass
class InstructionReport(MeasuredReport):
    MEASURES = INSTRUCTION_MEASURES

    model: str
    source: str
    split: str
    problems: int
    backend: str
    settings: dict[str, Any]
    prompt_strict: Measure
    prompt_loose: Measure
    instruction_strict: Measure
    instruction_loose: Measure
    per_type: list[TypeRow] = field(default_factory=list)
    per_prompt: list[PromptResult] = field(default_factory=list)
    seconds: float = 0.0

    def problem_counts(self) -> list[list[Any]]:
        return [pass_counts(p) for p in self.per_prompt]


def pass_counts(result: PromptResult) -> list[int]:
    """[prompt strict, prompt loose, instructions strict, instructions loose, instructions] of one prompt."""
    strict = sum(bool(i["strict"]) for i in result.instructions)
    loose = sum(bool(i["loose"]) for i in result.instructions)
    n = len(result.instructions)
    return [int(strict == n), int(loose == n), strict, loose, n]


def _ratio_bootstrap(
    numerators: Sequence[float], denominators: Sequence[float], seed: int, reps: int = BOOTSTRAP_REPS
) -> tuple[float, float]:
    """A percentile bootstrap 95% interval of sum(numerators) / sum(denominators), prompts resampled."""
    import numpy as np

    top, bottom = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if top.size == 0:
        raise EvalError("no prompts to take an interval over")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, top.size, size=(reps, top.size))
    ratios = top[draws].sum(axis=1) / bottom[draws].sum(axis=1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return (round(float(low), 4), round(float(high), 4))


def ratio_measure(numerators: Sequence[float], denominators: Sequence[float], seed: int) -> Measure:
    return Measure(round(sum(numerators) / sum(denominators), 4), _ratio_bootstrap(numerators, denominators, seed))


def figures(counts: Sequence[Sequence[int]], seed: int) -> dict[str, Measure]:
    """IFEval's four figures of per-prompt `pass_counts`, each with its interval (seeds seed … seed+3)."""
    ones = [1] * len(counts)
    columns = list(zip(*counts, strict=True))
    return {
        "prompt_strict": ratio_measure(columns[0], ones, seed),
        "prompt_loose": ratio_measure(columns[1], ones, seed + 1),
        "instruction_strict": ratio_measure(columns[2], columns[4], seed + 2),
        "instruction_loose": ratio_measure(columns[3], columns[4], seed + 3),
    }


def paired_change(
    after: Sequence[Sequence[int]], before: Sequence[Sequence[int]], seed: int, reps: int = BOOTSTRAP_REPS
) -> dict[str, Measure]:
    """Each figure after − before on the same prompts, the interval resampling prompts for both at once."""
    import numpy as np

    a, b = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    if a.shape != b.shape or not a.size:
        raise EvalError("a paired change needs the same prompts measured before and after")
    if not (a[:, 4] == b[:, 4]).all():
        raise EvalError("a paired change needs the same instructions on every prompt before and after")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(a), size=(reps, len(a)))
    changes: dict[str, Measure] = {}
    for key, column, denominator in (
        ("prompt_strict", 0, None), ("prompt_loose", 1, None), ("instruction_strict", 2, 4), ("instruction_loose", 3, 4)
    ):
        value = float(_share(a, column, denominator) - _share(b, column, denominator))
        spread = _share(a[draws], column, denominator) - _share(b[draws], column, denominator)
        low, high = np.quantile(spread, [0.025, 0.975])
        changes[key] = Measure(round(value, 4), (round(float(low), 4), round(float(high), 4)))
    return changes


def _share(counts: Any, column: int, denominator: int | None) -> Any:
    """The figure of `column` over the prompts (axis -2) of `counts` (pass_counts rows, maybe resampled)."""
    total = counts[..., denominator].sum(axis=-1) if denominator is not None else counts.shape[-2]
    return counts[..., column].sum(axis=-1) / total


def per_type_table(results: Sequence[PromptResult]) -> list[TypeRow]:
    """Per instruction type: how many instructions of it were given, and the share passing strictly and loosely."""
    tally: dict[str, list[int]] = {}
    for result in results:
        for instruction in result.instructions:
            row = tally.setdefault(instruction["id"], [0, 0, 0])
            row[0] += 1
            row[1] += bool(instruction["strict"])
            row[2] += bool(instruction["loose"])
    return [TypeRow(t, n, round(s / n, 4), round(lo / n, 4)) for t, (n, s, lo) in sorted(tally.items())]


def score_answers(prompts: Sequence[InstructionPrompt], answers: Sequence[tuple[str, str]]) -> list[PromptResult]:
    """Each prompt's (response, finish reason) checked instruction by instruction."""
    return [
        PromptResult(p.id, p.prompt, text, finish, check_instructions(text, p.instruction_ids, p.kwargs, p.prompt))
        for p, (text, finish) in zip(prompts, answers, strict=True)
    ]


def evaluate_instructions(
    model: str,
    instruction_set: InstructionSet,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    backend: GenerationBackend = "auto",
    batch_size: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> InstructionReport:
    """Greedy answers of `model` to `instruction_set`, scored as IFEval scores them."""
    started = time.perf_counter()
    prompts = instruction_set.prompts
    answers, engine = greedy_answers(
        model, [p.messages for p in prompts], max_tokens, backend=backend, batch_size=batch_size, progress=progress
    )
    results = score_answers(prompts, [(a.text, a.finish_reason) for a in answers])
    scores = figures([pass_counts(r) for r in results], seed)
    return InstructionReport(
        model=model,
        source=instruction_set.source,
        split=instruction_set.split,
        problems=len(prompts),
        backend=engine,
        settings={"decoding": "greedy", "max_tokens": max_tokens, "seed": seed, "batch_size": batch_size},
        per_type=per_type_table(results),
        per_prompt=results,
        seconds=round(time.perf_counter() - started, 1),
        **scores,
    )


def report_markdown(report: InstructionReport) -> str:
    lines = [
        f"# eval task: {report.model} on {report.source} ({report.split}, {report.problems} prompts)",
        "",
        f"Greedy answers on {report.backend}, at most {report.settings['max_tokens']} tokens; checked by "
        f"IFEval's checkers (tools/instruction_checks.py); intervals: bootstrap 95% over prompts, seed "
        f"{report.settings['seed']}. {report.seconds:.0f} s.",
        "",
        "| measure | value | 95% interval |",
        "|---|---|---|",
    ]
    for key, label in INSTRUCTION_MEASURES:
        m: Measure = getattr(report, key)
        lines.append(f"| {label} | {m.value:.3f} | {m.ci95[0]:.3f} – {m.ci95[1]:.3f} |")
    lines += ["", "| instruction type | n | strict | loose |", "|---|---|---|---|"]
    lines += [f"| {row.type} | {row.n} | {row.strict:.3f} | {row.loose:.3f} |" for row in report.per_type]
    cut = sum(p.finish_reason == "length" for p in report.per_prompt)
    if cut:
        lines += ["", f"{cut} of {report.problems} answers were cut at the token budget."]
    return "\n".join(lines) + "\n"


def write_report(report: InstructionReport, out: Path, *, replace: bool = False) -> Path:
    """report.json and report.md in `out`, written whole or not at all."""
    if out.exists() and any(out.iterdir()) and not replace:
        raise EvalError(f"{out} exists and is not empty (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_written_whole(out) as folder:
        (folder / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        (folder / "report.md").write_text(report_markdown(report))
    return out


class InstructionEvaluation(Evaluation):
    """Instruction-following evaluation of one plan: the same prompts and budget for every model."""

    kind: ClassVar[EvalKind] = "task"
    ylabel: ClassVar[str] = "share passing"
    digits: ClassVar[int] = 3

    def __init__(
        self,
        plan: Any,
        load: Callable[[], InstructionSet],
        backend: GenerationBackend = "auto",
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        super().__init__(plan, progress)
        self.load = load
        self.backend: GenerationBackend = backend

    @property
    def source(self) -> str:
        return str(self.plan.prompts)

    def run(self, model: str, out: Path) -> EvaluationRecord:
        settings = self.plan.settings
        report = evaluate_instructions(
            model, self.load(), max_tokens=settings.max_tokens, seed=settings.seed, backend=self.backend,
            batch_size=settings.batch_size, progress=self.progress,
        )
        write_report(report, out, replace=True)
        return report.record()
