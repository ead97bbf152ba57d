"""`prefsmith eval task`: the near misses, the intervals and the problem loading (fast), and the whole
evaluation on the real small model, twice, through the CLI and in process (the same figures: seeded)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from configs.splits import held_out
from pipelines.prompt_sources import load_problems
from tests.test_cli import assert_user_error, prefsmith
from training.evaluation.base import EvalError, EvalSettings
from training.evaluation.task import bootstrap_ci, distractors, evaluate_task, paired_difference


def test_near_misses_surround_the_gold_answer_and_include_the_plain_sum() -> None:
    question = "A box holds 6 rows of 5 pencils. How many pencils are in 4 boxes?"
    assert distractors(Fraction(120), question) == [Fraction(v) for v in (121, 119, 122, 118, 130, 110, 15)]
    assert Fraction(3) not in distractors(Fraction(3), "What is 1 + 2?"), "the plain sum is the gold: dropped"


def test_bootstrap_intervals_are_seeded_and_hold_the_mean() -> None:
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(values, seed=3)
    assert low < 0.3 < high and (low, high) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci([1.0] * 10, seed=0) == (1.0, 1.0)
    better = paired_difference([1.0] * 20, [0.0] * 5 + [1.0] * 15, seed=0)
    assert better.value == 0.25 and better.ci95[0] > 0, "a paired improvement whose interval excludes zero"


def test_an_evaluation_record_is_stored_flat_as_the_loop_always_stored_it() -> None:
    """iterate keeps each evaluation stage's record in the database and rounds.json: the measures' keys at the top
    level (bias records name their measures); reading one back gives the same record."""
    from storage.evaluations import BIAS_MEASURES, TASK_MEASURES, EvaluationRecord, Measure

    scores = {k: Measure(0.5, (0.25, 0.75)) for k, _ in TASK_MEASURES}
    task = EvaluationRecord("m", TASK_MEASURES, scores, 2, "heldout", [[1.0, True, False]])
    assert task.stored() == {
        "model": "m",
        **{k: {"value": 0.5, "ci95": [0.25, 0.75]} for k, _ in TASK_MEASURES},
        "problems": 2,
        "split": "heldout",
        "per_problem": [[1.0, True, False]],
    }
    bias = EvaluationRecord(
        "m", BIAS_MEASURES, {k: Measure(9.0, (8.0, 10.0)) for k, _ in BIAS_MEASURES}, 3, "heldout",
        perplexity=12.5, baseline=Measure(7.0, (6.0, 8.0)), seconds=1.5,
    )  # fmt: skip
    stored = bias.stored()
    assert list(stored) == ["model", "measures", *(k for k, _ in BIAS_MEASURES), "perplexity",
                            "train_mean_baseline", "problems", "split", "seconds"]  # fmt: skip
    assert stored["measures"][0] == ["bias_overall", "bias overall"]
    for record in (task, bias):
        assert EvaluationRecord.from_stored(json.loads(json.dumps(record.stored()))) == record


def test_built_in_problems_are_the_held_out_split_and_files_need_answers(tmp_path: Path) -> None:
    problems = load_problems("builtin:arithmetic", limit=10)
    assert problems.split == "heldout" and len(problems.problems) == 10
    assert all(held_out(p.question) for p in problems.problems), "synthesis never plays these"
    no_answer = tmp_path / "q.jsonl"
    no_answer.write_text('{"prompt": "What is 1 + 1?", "answer": 2}\n{"prompt": "Name a colour."}\n')
    with pytest.raises(EvalError, match=r"q.jsonl: prompt 2 \('Name a colour.'\) has no 'answer' field"):
        load_problems(str(no_answer))
    with pytest.raises(EvalError, match="holds no number"):
        no_answer.write_text('{"prompt": "Name a colour.", "answer": "blue"}\n')
        load_problems(str(no_answer))
    assert_user_error(prefsmith("eval", "task", "--prompts", "builtin:coding"), "has no 'answer' field")
    assert_user_error(prefsmith("eval", "task", "--prompts", str(tmp_path / "missing.jsonl")), "missing.jsonl")


@pytest.mark.model
def test_eval_task_on_the_small_model_gives_the_same_figures_twice(small_model_path: Path, tmp_path: Path) -> None:
    args = ["--prompts", "builtin:arithmetic", "--limit", "3", "--samples", "2", "--max-tokens", "16", "--seed", "5"]
    done = prefsmith("eval", "task", *args, "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    assert "answer ranking" in done.stdout and "3 heldout problems" in done.stdout
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.json", "report.md", "report.png"}
    again = evaluate_task(
        "smollm2-135m-instruct",
        load_problems("builtin:arithmetic", 3, seed=5),
        EvalSettings(samples=2, max_tokens=16, seed=5),
    )
    figures = json.loads(json.dumps(again.figures()))
    written.pop("seconds")
    assert written == figures, "seeded: the same figures from the CLI and in process"
    assert written["problems"] == 3 and len(written["per_problem"]) == 3
    for row in written["per_problem"]:
        assert row["ranked_first"] == (row["gold_logprob"] > row["best_distractor_logprob"])
        assert 0.0 <= row["sampled_correct"] <= 1.0
    for key in ("sampled_accuracy", "greedy_accuracy", "answer_ranking"):
        low, high = written[key]["ci95"]
        assert low <= written[key]["value"] <= high
    assert_user_error(prefsmith("eval", "task", *args, "--out", str(tmp_path / "report")), "pass --force")
