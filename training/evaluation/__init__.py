"""Evaluation of trained models: task skill on held-out problems (`task`, its plots in `plots`) and occupational bias
against the BLS table (`bias_probes`, `bias_metrics`, `bias_report`), each an `Evaluation` of one `EvalPlan` (`base`).
"""

from __future__ import annotations

from training.evaluation.base import EvalError, EvalKind, Evaluation


def evaluation_class(kind: EvalKind) -> type[Evaluation]:
    """The evaluation a trainer names (`PreferenceTrainer.evaluation`)."""
    from training.evaluation.bias_report import BiasEvaluation
    from training.evaluation.task import TaskEvaluation

    found: dict[str, type[Evaluation]] = {"task": TaskEvaluation, "bias": BiasEvaluation}
    if kind not in found:
        raise EvalError(f"unknown evaluation {kind!r} (have: {', '.join(found)})")
    return found[kind]
