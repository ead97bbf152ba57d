"""Writes that outlast a database hiccup: a transaction that fails for a reason that may pass (a dropped
connection, a server restarting, a locked SQLite file) is retried with backoff; one that fails for a
reason that will not pass (a constraint, a bug, a lost lease) is raised at once.

Safe because every write prefsmith makes is idempotent (see `storage.records`): a retried transaction that
had in fact committed stores nothing twice.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from configs.errors import PrefsmithError, StorageError

T = TypeVar("T")

FIRST_WAIT_S = 0.2
MAX_WAIT_S = 10.0


class StorageUnavailableError(StorageError):
    """The database kept failing for longer than the retry budget."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same transaction later may succeed."""
    if isinstance(exc, PrefsmithError | IntegrityError):
        return False
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_retries(
    action: Callable[[], T],
    what: str,
    *,
    budget_s: float,
    on_retry: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`action()`, retried with jittered exponential backoff while it fails transiently, for at most
    `budget_s` seconds; then StorageUnavailableError naming `what` and the last error."""
    deadline = time.monotonic() + budget_s
    wait_s, attempt = FIRST_WAIT_S, 1
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200] or type(exc).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageUnavailableError(
                    f"{what}: the database kept failing for {budget_s:.0f} s ({attempt} attempts); last error: {reason}"
                ) from exc
            pause = min(wait_s * (1 + random.random() / 2), left, MAX_WAIT_S)
            message = f"prefsmith: {what} failed ({reason}); retrying in {pause:.1f} s (attempt {attempt + 1})"
            (on_retry or (lambda line: print(line, file=sys.stderr, flush=True)))(message)
            sleep(pause)
            wait_s, attempt = min(wait_s * 2, MAX_WAIT_S), attempt + 1
