"""Alembic migrations driven from Python: `upgrade` to head, report the current revision, check drift.

The Alembic environment ships inside the package (storage/migrations), so `prefsmith db upgrade` works
from any directory and from a Ray working_dir upload.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from configs.errors import StorageError
from storage.db import create_db_engine, redact_url, resolve_db_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolates '%'; URLs with percent-encoded passwords must survive it.
    config.set_main_option("sqlalchemy.url", resolve_db_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "storage/migrations has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str | None = None, *, create_dirs: bool = False) -> str:
    """Migrate the database at `url` to the newest schema; return the revision it is at."""
    engine = create_db_engine(url, create_dirs=create_dirs)
    try:
        config = alembic_config(str(engine.url.render_as_string(hide_password=False)))
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        return current_revision(engine) or ""
    finally:
        engine.dispose()


def require_current(engine: Engine) -> None:
    """Refuse to work on a database whose schema is missing or older than this prefsmith."""
    revision = current_revision(engine)
    if revision != head_revision():
        shown = redact_url(engine.url.render_as_string(hide_password=False))
        state = (
            "has no prefsmith schema"
            if revision is None
            else f"is at schema {revision}, not {head_revision()}"
        )
        raise StorageError(f"database {shown} {state}; run `prefsmith db upgrade --db URL` first")


def open_database(url: str | None = None, *, migrate: bool = False) -> Engine:
    """An engine on a database at the current schema; with `migrate`, upgrade it first (embedded default).

    The default SQLite file under $PREFSMITH_HOME is created on demand; an explicit URL is never created
    implicitly except by `migrate`.
    """
    is_default = url is None
    if migrate:
        upgrade(url, create_dirs=is_default)
    engine = create_db_engine(url, create_dirs=is_default and migrate)
    try:
        require_current(engine)
    except StorageError:
        engine.dispose()
        raise
    return engine
