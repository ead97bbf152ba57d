"""The CLI's terminal output: the console commands print on, a pipeline's narration, long commands' progress.

Progress is a live bar on a terminal and a plain line now and then elsewhere (logs, CI, Ray jobs).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from pipelines.synthesis.run import RunMetrics

console = Console(soft_wrap=True)


class EpisodeProgress:
    """A live bar on a terminal; a plain line every `every_s` seconds otherwise (logs, CI, Ray jobs)."""

    def __init__(self, every_s: float = 15.0) -> None:
        self.every_s, self.last = every_s, 0.0
        self.bar: Any = None
        self.task: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("episodes"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __call__(self, m: RunMetrics) -> None:
        info = (
            f"accepted {m.accepted} ({m.accept_rate:.0%}) · {m.pairs_per_min:.2f} pairs/min · "
            f"{m.tokens_per_s:.1f} tok/s"
        )
        if self.bar is not None:
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("synthesize", total=m.episodes_total, info=info)
            self.bar.update(self.task, completed=m.episodes_done, info=info)
            if m.episodes_done >= m.episodes_total:
                self.bar.stop()
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or m.episodes_done >= m.episodes_total:
            self.last = now
            print(f"prefsmith: {m.episodes_done}/{m.episodes_total} episodes · {info}", file=sys.stderr, flush=True)


def say(line: str) -> None:
    """Print a line of a pipeline's narration as it is (model output and paths are not rich markup)."""
    console.print(line, markup=False)


class StageProgress:
    """A line per stage of a long command when it is done, with a live count on a terminal."""

    def __init__(self) -> None:
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{stage}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif done == total:
            print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)

