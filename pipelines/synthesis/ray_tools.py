"""Judge tools as Ray tasks: sandboxes and retrieval run on CPU workers off the episode's process, each call
bounded and dropped when the run is abandoned; cheap, safe tools stay in the episode's process."""

from __future__ import annotations

import threading
from typing import Any

import ray

from pipelines.synthesis.ray_calls import AbandonedWait, bounded_get
from tools.base import Evidence, JudgeTool


@ray.remote(num_cpus=0.25)
def _run_tool(tool: JudgeTool, arguments: dict[str, Any]) -> Evidence:
    return tool.evidence(arguments)


def wrap_tool(tool: JudgeTool, timeout_s: float, abandon: threading.Event) -> JudgeTool:
    """How a run calls `tool`: in the episode's process when it is cheap and safe, else as Ray tasks."""
    return tool if tool.runs_in_process else RayToolProxy.wrap(tool, timeout_s=timeout_s, abandon=abandon)


class RayToolProxy(JudgeTool):
    """A judge tool whose calls run as Ray tasks on CPU workers (sandboxes and retrieval off the driver),
    each bounded by `timeout_s` and dropped when the run is abandoned."""

    inner: Any
    shipped: Any = None  # the tool in Ray's object store: sent to workers once, not with every call
    timeout_s: float = 120.0
    abandon: Any = None  # a threading.Event set when the run stops now

    @property
    def per_candidate(self) -> bool:  # type: ignore[override]
        return self.inner.per_candidate

    @property
    def verifies(self) -> bool:  # type: ignore[override]
        return self.inner.verifies

    @classmethod
    def wrap(cls, tool: JudgeTool, timeout_s: float = 120.0, abandon: threading.Event | None = None) -> RayToolProxy:
        return cls(
            name=tool.name,
            description=tool.description,
            args_schema=tool.args_schema,
            inner=tool,
            shipped=ray.put(tool),
            timeout_s=timeout_s,
            abandon=abandon or threading.Event(),
        )

    def _run(self, **arguments: Any) -> dict[str, Any]:
        return self.evidence(arguments).model_dump()

    def arguments_for(self, prompt, candidate):  # same signature as the tool's
        return self.inner.arguments_for(prompt, candidate)

    def evidence(self, arguments: dict[str, Any]) -> Evidence:
        try:
            return bounded_get(_run_tool.remote(self.shipped, arguments), self.timeout_s, self.abandon)
        except ray.exceptions.GetTimeoutError:
            return Evidence(tool=self.name, ok=False, error=f"tool call timed out after {self.timeout_s:g} s")
        except AbandonedWait:
            return Evidence(tool=self.name, ok=False, error="tool call abandoned: the run is stopping")
        except ray.exceptions.RayError as exc:
            return Evidence(tool=self.name, ok=False, error=f"tool worker failed: {type(exc).__name__}")
