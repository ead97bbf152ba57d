"""Calls into Ray that must not hang a run: bounded waits given up when the run is abandoned, cancelling a task,
killing an actor, and the environment every actor of a run starts with."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray

RAY_WAIT_S = 60.0  # bound on Ray calls that should answer at once (usage, kill)
POLL_S = 0.5  # how often a long Ray wait looks whether the run is being abandoned
PASSED_ENV = (
    "PREFSMITH_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "OMP_NUM_THREADS",
)


def runtime_env() -> dict[str, Any]:
    """The Ray runtime env of a run's actors: the synthesizer's settings of `PASSED_ENV`."""
    return {"env_vars": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}}


class AbandonedWait(Exception):
    """A Ray wait given up because the run is being abandoned."""


def bounded_get(ref: Any, timeout_s: float, abandon: threading.Event) -> Any:
    """`ray.get(ref)`, waiting at most `timeout_s` (GetTimeoutError) and giving up at once when `abandon` is
    set (AbandonedWait; the task is cancelled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            cancel(ref)
            raise ray.exceptions.GetTimeoutError(f"no answer within {timeout_s:.0f} s")
        ready, _ = ray.wait([ref], timeout=min(POLL_S, left))
        if ready:
            return ray.get(ref)
        if abandon.is_set():
            cancel(ref)
            raise AbandonedWait()


def cancel(ref: Any) -> None:
    """Stop a task's worker (a hung tool); an actor call cannot be forced and is simply dropped."""
    try:
        ray.cancel(ref, force=True)
    except Exception:  # actor calls refuse force=True; an already finished task cannot be cancelled
        pass


def kill(actor: Any) -> None:
    """Stop `actor` for good (Ray does not restart it)."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        pass
