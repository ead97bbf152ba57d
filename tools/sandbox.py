"""The python_sandbox judge tool: runs a candidate's code against the task's tests in the kernel-enforced
sandbox of `tools.jail` (bubblewrap namespaces, seccomp, rlimits) and turns the harness's signed per-test
report into evidence. The verdict is True only when every test ran to its end and passed; leaving early,
a tampered or missing report, a killed process or a machine that cannot isolate the code all fail.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field

from tools.base import Evidence, JudgeTool, PromptContext
from tools.jail import (
    MAX_MEMORY_MB,
    MAX_PROCESSES,
    MAX_SCRATCH_MB,
    MAX_WALL_SECONDS,
    MIN_MEMORY_MB,
    SandboxLimits,
    SandboxPolicy,
    SandboxResult,
    isolation_problem,
    run_python,
)

__all__ = [
    "PythonSandboxTool", "SandboxLimits", "SandboxPolicy", "SandboxResult", "after_prelude", "extract_code",
    "run_python",
]

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The code in a candidate answer: its fenced ```python blocks if any, else the whole text."""
    blocks = _FENCE.findall(text)
    return "\n\n".join(blocks) if blocks else text


def after_prelude(prelude: str, code: str) -> str:
    """The candidate's code after the task's `prelude` (a HumanEval prompt: imports, helpers, the function's
    signature and docstring). An answer that starts indented completes the prelude's last function, as HumanEval's
    completions do; any other follows the prelude, its definitions replacing the prelude's stubs."""
    if not prelude:
        return code
    prelude = prelude if prelude.endswith("\n") else prelude + "\n"
    if code.lstrip("\n")[:1] in (" ", "\t"):
        return prelude + code.lstrip("\n")
    return prelude + "\n\n" + code


class PythonSandboxArgs(BaseModel):
    code: str = Field(description="Python source to run (a candidate's code).")
    tests: str = Field("", description="Test code run after it, one top-level statement (assert) at a time.")
    prelude: str = Field("", description="The task's code run before the candidate's (a HumanEval prompt).")
    timeout_s: float = Field(5.0, gt=0, le=MAX_WALL_SECONDS, description="Wall-clock limit.")
    memory_mb: int = Field(512, ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB, description="Address-space limit.")


class PythonSandboxTool(JudgeTool):
    name: str = "python_sandbox"
    description: str = "Run candidate Python code against the task's tests in an isolated sandbox."
    args_schema: type[BaseModel] = PythonSandboxArgs
    default_timeout_s: float = 5.0
    default_memory_mb: int = 512
    processes: int = Field(0, ge=0, le=MAX_PROCESSES)
    scratch_mb: int = Field(32, ge=1, le=MAX_SCRATCH_MB)
    python: str | None = None
    allow_weaker_isolation: bool = False

    @property
    def policy(self) -> SandboxPolicy:
        return SandboxPolicy(python=self.python, allow_weaker=self.allow_weaker_isolation)

    def isolation_problem(self) -> str | None:
        """Why this machine cannot run the sandbox as configured (None: it can)."""
        return isolation_problem(self.policy)

    def _run(
        self, code: str, tests: str = "", prelude: str = "", timeout_s: float = 5.0, memory_mb: int = 512
    ) -> dict[str, Any]:
        limits = SandboxLimits(
            cpu_seconds=max(1, int(timeout_s)), wall_seconds=timeout_s, memory_mb=memory_mb,
            processes=self.processes, scratch_mb=self.scratch_mb,
        )
        result = run_python(after_prelude(prelude, extract_code(code)), tests, limits, self.policy)
        data = {
            "outcome": result.outcome,
            "reason": result.reason,
            "tests": [asdict(test) for test in result.tests],
            "returncode": result.returncode,
            "stdout": result.stdout[-2000:],
            "stderr": result.stderr[-2000:],
            "seconds": round(result.seconds, 3),
            "isolation": result.isolation,
            "missing_isolation": result.missing,
            "interpreter": result.interpreter,
        }
        if result.outcome == "refused":
            refused = Evidence(tool=self.name, ok=False, summary=result.reason, data=data, error=result.reason)
            return refused.model_dump()
        summary = "tests passed" if result.passed else f"{result.outcome}: {result.reason[:200]}"
        return Evidence(tool=self.name, ok=True, verdict=result.passed, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        if candidate is None or "tests" not in prompt.meta:
            return None
        arguments = {
            "code": candidate,
            "tests": str(prompt.meta["tests"]),
            "timeout_s": self.default_timeout_s,
            "memory_mb": self.default_memory_mb,
        }
        if prompt.meta.get("prelude"):
            arguments["prelude"] = str(prompt.meta["prelude"])
        return arguments
