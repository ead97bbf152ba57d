"""A judge tool that never answers (a plug-in loaded by import path): what a stuck retrieval service or a
wedged sandbox looks like to a run. Used by the fault tests only."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tools.base import JudgeTool, PromptContext


class HungTool(JudgeTool):
    name: str = "hung"
    description: str = "Never returns."

    def _run(self, **arguments: Any) -> dict[str, Any]:
        # The fault test waits for this file rather than guessing how long the run takes to reach the tool.
        marker = os.environ.get("PREFSMITH_TEST_HUNG_MARKER")
        if marker:
            Path(marker).touch()
        while True:
            time.sleep(60)

    def arguments_for(self, prompt: PromptContext, candidate: str | None) -> dict[str, Any] | None:
        return None if candidate is None else {}
