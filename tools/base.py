"""What every judge tool is: a LangChain tool with a pydantic argument schema that returns `Evidence`,
plus `arguments_for`, which says how to call it on an input and one candidate (or that it does not apply).

Tools never raise on bad candidates: a failure is evidence too (`ok=False`, `error`), so a judge's round
goes on and the record says why a tool had nothing to say.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, ClassVar

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field


class Evidence(BaseModel):
    """What one tool call established. `verdict` is set only by verifiable checks (answer matches, tests
    pass) and outweighs the judge's opinion in the ranking."""

    tool: str
    ok: bool = Field(description="The tool ran and produced a result (False: it failed; see `error`).")
    verdict: bool | None = Field(None, description="A verifiable pass/fail on the candidate, if the tool gives one.")
    summary: str = Field("", description="One line the judge reads.")
    data: dict[str, Any] = Field(default_factory=dict, description="Structured result for the record.")
    error: str | None = None


class PromptContext(BaseModel):
    """What a tool may know about the input: its text and the metadata its row carried (gold answer, tests,
    occupation...)."""

    text: str
    meta: dict[str, Any] = Field(default_factory=dict)


class JudgeTool(BaseTool):
    """Base of prefsmith's judge tools. Subclasses set `name`, `description`, `args_schema`, implement
    `_run(**args) -> dict` (an `Evidence` dump) and `arguments_for`."""

    # Whether the tool looks at each candidate (True) or only at the input (False, e.g. retrieval).
    per_candidate: ClassVar[bool] = True
    # Whether a synthesis run calls it in the episode's own process: tools that take microseconds to
    # milliseconds and run no untrusted code. Others (the sandbox, plug-ins) run as Ray tasks on CPU workers.
    runs_in_process: ClassVar[bool] = False
    # Whether a pass of this tool verifies a candidate (its answer is right, its tests pass). False for checks a
    # verified candidate must pass too but that say nothing of its correctness: it finished, its steps are true.
    verifies: ClassVar[bool] = True

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        """Arguments to call this tool with on `prompt` and `candidate`, or None when it does not apply."""
        raise NotImplementedError

    def evidence(self, arguments: dict[str, Any]) -> Evidence:
        """Run the tool; any exception becomes failed evidence rather than a crashed round.

        The arguments are checked against `args_schema` and handed to `_run`, as LangChain's `invoke` does,
        without its per-call callback and signature machinery (which cost more than a reference-answer check
        itself: a synthesis run calls this for every candidate). A `_run` that takes LangChain's
        `run_manager` or `config` still goes through `invoke`.
        """
        try:
            if _takes_langchain_extras(type(self)):
                return Evidence.model_validate(self.invoke(arguments))
            return Evidence.model_validate(self._run(**self._checked(arguments)))
        except Exception as exc:  # a tool failure is evidence, never a crash
            return Evidence(tool=self.name, ok=False, error=f"{type(exc).__name__}: {exc}")

    def _checked(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """`arguments` validated (and coerced) by `args_schema`: the keys given, as LangChain passes them."""
        schema = self.args_schema
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            return dict(arguments)
        checked = schema.model_validate(arguments)
        return {key: getattr(checked, key) for key in type(checked).model_fields if key in arguments}


@functools.cache
def _takes_langchain_extras(cls: type[JudgeTool]) -> bool:
    return bool({"run_manager", "config", "callbacks"} & set(inspect.signature(cls._run).parameters))
