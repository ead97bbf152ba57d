"""A judge tool that never answers (a plug-in loaded by import path): what a stuck retrieval service or a
wedged sandbox looks like to a run. Used by the fault tests only."""

from __future__ import annotations

import time
from typing import Any

from tools.base import JudgeTool, PromptContext


class HungTool(JudgeTool):
    name: str = "hung"
    description: str = "Never returns."

    def _run(self, **arguments: Any) -> dict[str, Any]:
        while True:
            time.sleep(60)

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        return None if candidate is None else {}
