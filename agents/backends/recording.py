"""A backend that writes down every call it is given, so a benchmark can replay exactly what a run sent to its
engine (same requests, same calls) straight to an identical engine.

Made by `create_backend(config, record_to=path)`; the file is JSON lines, one call per line. Calls pass
straight through to the engine, concurrent ones concurrently, so recording never changes how the engine
batches them (a continuous-batching engine still sees each request the moment it arrives).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from agents.backends.protocol import Backend, ChatRequest, ChatResult


class RecordingBackend(Backend):
    """`inner` behind the same protocol; each call's requests are appended to `path` before they run."""

    def __init__(self, inner: Backend, path: str | Path) -> None:
        super().__init__(inner.max_batch_size)
        self.inner, self.path = inner, Path(path)
        self.supports_json_schema = inner.supports_json_schema
        self._write_lock = threading.Lock()

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        line = json.dumps([request.model_dump(mode="json") for request in requests])
        with self._write_lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        return self.inner.generate(requests)

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return self.generate(requests)

    @property
    def engine_calls(self) -> int:  # the engine's own count
        return self.inner.engine_calls

    @engine_calls.setter
    def engine_calls(self, value: int) -> None:
        pass  # Backend.__init__ sets it; the inner engine keeps the count

    def close(self) -> None:
        self.inner.close()


def recorded_calls(path: str | Path) -> list[list[ChatRequest]]:
    """The engine calls a `RecordingBackend` wrote to `path`, in the order they ran."""
    with Path(path).open(encoding="utf-8") as lines:
        return [[ChatRequest.model_validate(r) for r in json.loads(line)] for line in lines if line.strip()]
