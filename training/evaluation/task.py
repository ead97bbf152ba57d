"""Task evaluation (`prefsmith eval task`): how well a model solves problems with gold answers, on problems synthesis
never plays.

Three measures over the same problems, each with a bootstrap 95% interval over problems:

- sampled accuracy: the share of K sampled answers (the run's sampling) whose final number is the gold one;
- greedy accuracy: the share of problems whose greedy answer is right;
- answer ranking: the share of problems where the model gives "The answer is GOLD." a higher log-probability
  than every near-miss ("The answer is GOLD±1", ±2, ±10, and the plain sum of the question's numbers), so a
  model that has learnt the skill is seen even where its sampled answers still wander.

Right and wrong are decided by the reference-answer tool, the same check that gives synthesis its verdicts.
Seeded throughout: the same model, problems and seed give the same figures.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

from configs.schema import ModelConfig
from storage.evaluations import TASK_MEASURES, EvaluationRecord, Measure
from storage.folders import folder_written_whole
from training.evaluation.base import EvalError, EvalKind, EvalSettings, Evaluation, MeasuredReport, ProblemSet
from training.evaluation.plots import plot_measures

ANSWER_TEMPLATE = "The answer is {}."
DISTRACTOR_OFFSETS = (1, -1, 2, -2, 10, -10)
BOOTSTRAP_REPS = 2000


@dataclass
class ProblemResult:
    id: str
    question: str
    gold: str
    greedy: str
    greedy_correct: bool
    sampled_correct: float  # the share of the K samples that are right
    gold_logprob: float
    best_distractor: str
    best_distractor_logprob: float
    ranked_first: bool


@dataclass
class TaskReport(MeasuredReport):
    MEASURES = TASK_MEASURES

    model: str
    source: str
    split: str
    problems: int
    settings: dict[str, Any]
    sampled_accuracy: Measure
    greedy_accuracy: Measure
    answer_ranking: Measure
    per_problem: list[ProblemResult] = field(default_factory=list)
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        """What the evaluation found, without how long it took (which differs run to run)."""
        data = self.as_dict()
        data.pop("seconds")
        return data

    def problem_counts(self) -> list[list[Any]]:
        return [[p.sampled_correct, p.greedy_correct, p.ranked_first] for p in self.per_problem]


def number_text(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else repr(float(value))


def distractors(gold: Fraction, question: str) -> list[Fraction]:
    """Near misses of `gold`: ±1, ±2, ±10 and the plain sum of the question's numbers (a classic wrong
    method), without repeats or the gold itself."""
    numbers = [Fraction(n) for n in re.findall(r"(?<![\d.])\d+(?:\.\d+)?", question)]
    found: list[Fraction] = []
    for value in [gold + offset for offset in DISTRACTOR_OFFSETS] + [sum(numbers, Fraction(0))]:
        if value != gold and value not in found:
            found.append(value)
    return found


def bootstrap_ci(values: Sequence[float], seed: int, reps: int = BOOTSTRAP_REPS) -> tuple[float, float]:
    """A percentile bootstrap 95% interval of the mean of `values` (problems resampled with replacement)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(reps, data.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return (round(float(low), 4), round(float(high), 4))


def measure(values: Sequence[float], seed: int) -> Measure:
    return Measure(round(sum(values) / len(values), 4), bootstrap_ci(values, seed))


def paired_difference(after: Sequence[float], before: Sequence[float], seed: int) -> Measure:
    """after − before on the same problems, with a bootstrap interval that resamples problems (paired)."""
    differences = [a - b for a, b in zip(after, before, strict=True)]
    return measure(differences, seed)


def _correct(checker: Any, answer: str, gold: Fraction) -> bool:
    """Whether `answer` is right by the reference-answer tool `checker` (the check that gives synthesis its
    verdicts)."""
    return checker.evidence({"candidate": answer, "gold": number_text(gold)}).verdict is True


def answer_logprobs(model: Any, tokenizer: Any, messages: list[dict[str, str]], answers: list[str]) -> list[float]:
    """log p(answer | the chat so far, as the assistant's turn) of each answer, summed over its tokens."""
    import torch

    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = [tokenizer(a, add_special_tokens=False).input_ids for a in answers]
    length = len(prompt_ids) + max(len(a) for a in answer_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    ids = torch.full((len(answers), length), pad, dtype=torch.long)
    mask = torch.zeros((len(answers), length), dtype=torch.long)
    for row, tokens in enumerate(answer_ids):
        sequence = prompt_ids + tokens
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    totals = []
    for row, tokens in enumerate(answer_ids):
        positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(tokens), device=device)
        targets = torch.tensor(tokens, device=device)
        totals.append(round(float(logprobs[row, positions, targets].sum()), 4))
    return totals


def evaluate_task(
    model: str,
    problem_set: ProblemSet,
    settings: EvalSettings,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> TaskReport:
    """Evaluate `model` (a prefsmith model name, a checkpoint folder or an HF id) on `problem_set`."""
    started = time.perf_counter()
    problems = problem_set.problems

    from agents.backends import ChatRequest
    from agents.backends.local_transformers import TransformersBackend
    from agents.game import derived_seed
    from tools.reference_answer import ReferenceAnswerTool

    checker = ReferenceAnswerTool()

    backend = TransformersBackend(ModelConfig(name=model, dtype="float32", max_batch_size=settings.batch_size))
    try:
        sampled: list[list[str]] = []
        greedy: list[str] = []
        for start in range(0, len(problems), settings.batch_size):
            chunk = problems[start : start + settings.batch_size]
            requests = [
                ChatRequest(
                    messages=p.messages,
                    n=settings.samples,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    max_tokens=settings.max_tokens,
                    seed=derived_seed(settings.seed, p.id, "eval"),
                )
                for p in chunk
            ] + [ChatRequest(messages=p.messages, temperature=0.0, max_tokens=settings.max_tokens) for p in chunk]
            results = backend.generate(requests)
            for result in results:
                if not result.ok:
                    raise EvalError(f"{model}: generation failed ({result.error})")
            sampled += [r.texts for r in results[: len(chunk)]]
            greedy += [r.texts[0] for r in results[len(chunk) :]]
            if progress is not None:
                progress("answers", start + len(chunk), len(problems))
        rows = []
        for i, problem in enumerate(problems):
            near = distractors(problem.gold, problem.question)
            texts = [ANSWER_TEMPLATE.format(number_text(v)) for v in [problem.gold, *near]]
            scores = answer_logprobs(backend.model, backend.tokenizer, problem.messages, texts)
            best = max(range(1, len(texts)), key=lambda j: scores[j])
            rows.append(
                ProblemResult(
                    id=problem.id,
                    question=problem.question,
                    gold=number_text(problem.gold),
                    greedy=greedy[i],
                    greedy_correct=_correct(checker, greedy[i], problem.gold),
                    sampled_correct=sum(_correct(checker, t, problem.gold) for t in sampled[i]) / len(sampled[i]),
                    gold_logprob=scores[0],
                    best_distractor=number_text(near[best - 1]),
                    best_distractor_logprob=scores[best],
                    ranked_first=scores[0] > scores[best],
                )
            )
            if progress is not None:
                progress("answer ranking", i + 1, len(problems))
    finally:
        backend.close()
    seed = settings.seed
    return TaskReport(
        model=model,
        source=problem_set.source,
        split=problem_set.split,
        problems=len(problems),
        settings=asdict(settings),
        sampled_accuracy=measure([r.sampled_correct for r in rows], seed),
        greedy_accuracy=measure([float(r.greedy_correct) for r in rows], seed + 1),
        answer_ranking=measure([float(r.ranked_first) for r in rows], seed + 2),
        per_problem=rows,
        seconds=round(time.perf_counter() - started, 1),
    )


def report_markdown(report: TaskReport) -> str:
    s = report.settings
    lines = [
        f"# eval task: {report.model} on {report.source} ({report.split}, {report.problems} problems)",
        "",
        f"{s['samples']} samples a problem at temperature {s['temperature']} (top-p {s['top_p']}), "
        f"{s['max_tokens']} tokens, seed {s['seed']}; intervals: bootstrap 95% over problems. "
        f"{report.seconds:.0f} s.",
        "",
        "| measure | value | 95% interval |",
        "|---|---|---|",
    ]
    for key, label in TASK_MEASURES:
        m: Measure = getattr(report, key)
        lines.append(f"| {label} | {m.value:.3f} | {m.ci95[0]:.3f} – {m.ci95[1]:.3f} |")
    lines += [
        "",
        "| problem | gold | greedy answer | right | sampled right | gold ranked first (best near miss) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.per_problem:
        greedy = " ".join(r.greedy.split())[:60].replace("|", "\\|")
        question = " ".join(r.question.split())[:60].replace("|", "\\|")
        lines.append(
            f"| {question} | {r.gold} | {greedy} | {'yes' if r.greedy_correct else 'no'} | "
            f"{r.sampled_correct:.2f} | {'yes' if r.ranked_first else 'no'} ({r.best_distractor}) |"
        )
    return "\n".join(lines) + "\n"


def write_report(report: TaskReport, out: Path, *, replace: bool = False) -> Path:
    """report.json, report.md and report.png in `out`, written whole or not at all."""
    if out.exists() and any(out.iterdir()) and not replace:
        raise EvalError(f"{out} exists and is not empty (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_written_whole(out) as folder:
        (folder / "report.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        (folder / "report.md").write_text(report_markdown(report))
        plot_measures(
            {report.model: report.measures()},
            folder / "report.png",
            f"{report.model} on {report.source} ({report.split}, {report.problems} problems)",
        )
    return out


class TaskEvaluation(Evaluation):
    """Task evaluation of one plan: the same problems, settings and seed for every model."""

    kind: ClassVar[EvalKind] = "task"
    ylabel: ClassVar[str] = "share of problems"
    digits: ClassVar[int] = 3

    @property
    def source(self) -> str:
        return self.plan.prompts

    def run(self, model: str, out: Path) -> EvaluationRecord:
        if self.plan.problems is None:
            raise EvalError(f"task evaluation on {self.plan.prompts}: no problems were given to the plan")
        report = evaluate_task(model, self.plan.problems(), self.plan.settings, progress=self.progress)
        write_report(report, out, replace=True)
        return report.record()
