"""`prefsmith db upgrade|current`: the database's schema migrations.

Both go through `storage.migrate` (Alembic); the URL is shown with its password hidden.
"""

from __future__ import annotations

import typer

from pipelines.cli.options import DbOption
from pipelines.cli.terminal import console

db_app = typer.Typer(help="The database: schema migrations.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create or migrate the database schema to the newest revision."""
    from storage.db import redact_url, resolve_db_url
    from storage.migrate import upgrade

    revision = upgrade(db, create_dirs=db is None)
    console.print(f"database {redact_url(resolve_db_url(db))} is at schema revision {revision}")


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the database's schema revision and the newest one this prefsmith has."""
    from storage.db import create_db_engine, redact_url
    from storage.migrate import current_revision, head_revision

    engine = create_db_engine(db)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    shown = redact_url(engine.url.render_as_string(hide_password=False))
    console.print(f"database {shown}: revision {revision or 'none'} (newest: {head_revision()})")

