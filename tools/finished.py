"""The finish check: a candidate the backend cut off at max_tokens (finish reason `length`) did not finish its
answer, and fails, unless its task allows unfinished answers (prompt meta `allow_unfinished`). One ended at a
failure no continuation could undo (finish reason `abandoned`, `game.abandon_false_steps`) fails whatever the task.

The judge runs it on every candidate, whatever tools are configured: a cut-off answer is never clean data.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from tools.base import Evidence, JudgeTool, PromptContext

CHECK = "finished"


class FinishedArgs(BaseModel):
    finish_reason: str | None = Field(
        description="Why the backend ended the candidate: 'stop', 'length' or 'abandoned' (at a failure no "
        "continuation could undo)."
    )
    allow_unfinished: bool = Field(False, description="The task accepts an answer cut off at max_tokens.")


class FinishedTool(JudgeTool):
    runs_in_process: ClassVar[bool] = True
    verifies: ClassVar[bool] = False  # finishing is required of a verified answer, and proves nothing alone
    name: str = "finished"
    description: str = "Whether a candidate finished (was not cut off at max_tokens)."
    args_schema: type[BaseModel] = FinishedArgs

    def _run(self, finish_reason: str | None, allow_unfinished: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"check": CHECK, "finish_reason": finish_reason}
        if finish_reason == "length":
            if allow_unfinished:
                summary, verdict = "cut off at max_tokens; the task allows unfinished answers", None
            else:
                summary, verdict = "did not finish (cut off at max_tokens)", False
        elif finish_reason == "abandoned":
            summary = "abandoned at a false step no continuation could undo (game.abandon_false_steps)"
            verdict = False
        elif finish_reason is None:
            summary, verdict = "finish reason unknown (the backend did not say)", None
        else:
            summary, verdict = f"finished ({finish_reason})", True
        return Evidence(tool=self.name, ok=True, verdict=verdict, summary=summary, data=data).model_dump()

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        """Never from a candidate's text, which does not say how it ended: the judge calls `arguments_for_finish`
        on every candidate itself, so this tool named in `tools.enabled` adds nothing."""
        return None

    def arguments_for_finish(self, prompt: PromptContext, finish_reason: str | None) -> dict[str, Any]:
        allowed = str(prompt.meta.get("allow_unfinished", "")).strip().lower() in ("true", "1", "yes")
        return {"finish_reason": finish_reason, "allow_unfinished": allowed}
