"""Database engines and sessions: SQLite (WAL, busy timeout) by default, any SQLAlchemy URL otherwise.

URLs are shown only with the password hidden; connection failures become one-line `StorageError`s.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from configs.errors import StorageError
from configs.secrets import mask_secrets
from storage.folders import prefsmith_home

SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_db_url() -> str:
    return f"sqlite:///{prefsmith_home() / 'prefsmith.db'}"


def resolve_db_url(url: str | None = None) -> str:
    """The URL to use: explicit > $PREFSMITH_DB > SQLite file under $PREFSMITH_HOME.

    `postgresql://` means psycopg 3 (the driver prefsmith installs), not psycopg2.
    """
    url = url or os.environ.get("PREFSMITH_DB") or default_db_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"invalid database URL {redact_url(url)!r}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***; safe to print and log."""
    return mask_secrets(url)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_db_engine(url: str | None = None, *, create_dirs: bool = False, check: bool = True) -> Engine:
    """An engine for `url` (see `resolve_db_url`); with `check`, fail now if the database is unreachable.

    A SQLite file's folder is created only with `create_dirs` (the embedded default), so a mistyped path
    fails instead of leaving directories behind.
    """
    resolved = resolve_db_url(url)
    parsed = make_url(resolved)
    shown = redact_url(resolved)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict = {"future": True}
    if is_sqlite:
        database = parsed.database or ""
        if database and database != ":memory:":
            folder = Path(database).expanduser().parent
            if create_dirs:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.is_dir():
                raise StorageError(f"cannot open database {shown}: folder {folder} does not exist")
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = create_engine(resolved, **kwargs)
    except (NoSuchModuleError, ImportError, ArgumentError) as exc:
        raise StorageError(f"cannot use database {shown}: {exc}") from None
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    if check:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (OperationalError, SQLAlchemyError) as exc:
            engine.dispose()
            reason = (
                str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                if str(exc).strip()
                else type(exc).__name__
            )
            raise StorageError(f"cannot connect to database {shown}: {reason}") from None
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
