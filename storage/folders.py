"""Where prefsmith writes on disk by default, and how a folder it writes appears: whole or not at all.

Every layer that keeps files (prepared models, the embedded database, exports, labor tables, schedule
locks) asks `prefsmith_home()`; nothing else decides where home is.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from configs.errors import ConfigError

# A name that is one plain folder name everywhere it is used (run ids name export folders): no separators,
# no leading dot, no "..".
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def prefsmith_home() -> Path:
    """$PREFSMITH_HOME, else the user data dir (e.g. ~/.local/share/prefsmith)."""
    return Path(os.environ.get("PREFSMITH_HOME") or platformdirs.user_data_dir("prefsmith")).expanduser()


def check_slug(value: str, what: str) -> str:
    """`value`, if it is safe as a single folder name; else a ConfigError naming `what`."""
    if not _SLUG.fullmatch(value) or ".." in value:
        raise ConfigError(
            f"{what} {value!r}: use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or "
            "digit, no '..')"
        )
    return value


@contextmanager
def folder_written_whole(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """A staging folder beside `target` to write into. When the block ends without an error the staging
    folder takes `target`'s place; otherwise it is deleted and `target` is left as it was, so a reader never
    finds a half-written folder. An old `target` is moved aside before the staging folder is renamed in and
    removed after, so a whole copy exists at every moment. With `replace=False` a `target` that appeared
    meanwhile (another writer) is kept and FileExistsError raised."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if not (replace and target.exists()):
            try:
                os.rename(staging, target)  # over nothing or an empty folder; never over another writer's files
            except OSError as exc:
                raise FileExistsError(f"{target} already exists and is not empty") from exc
        else:
            retired = staging.with_name(f"{staging.name}.old")
            os.rename(target, retired)
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(retired, target)
                raise
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
