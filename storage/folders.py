"""Where prefsmith writes on disk by default, and how a folder it writes appears: whole or not at all.

Every layer that keeps files (prepared models, the embedded database, exports, labor tables, schedule
locks) asks `prefsmith_home()`; nothing else decides where home is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs


def prefsmith_home() -> Path:
    """$PREFSMITH_HOME, else the user data dir (e.g. ~/.local/share/prefsmith)."""
    return Path(os.environ.get("PREFSMITH_HOME") or platformdirs.user_data_dir("prefsmith")).expanduser()


@contextmanager
def folder_written_whole(target: Path) -> Iterator[Path]:
    """A staging folder beside `target` to write into. When the block ends without an error the staging
    folder takes `target`'s place (an old `target` is removed first); otherwise it is deleted and `target`
    is left as it was, so a reader never finds a half-written folder."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
