"""`prefsmith ui`: the web UI over a database, served on one interface.

The UI itself is `ui.app`; who may serve and reach it, on which interface with which token, is `ui.security`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from configs.errors import PrefsmithError
from pipelines.cli.options import DbOption
from pipelines.cli.terminal import say


def ui_command(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on; off loopback $PREFSMITH_UI_TOKEN is needed.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    read_only: Annotated[bool, typer.Option("--read-only", help="Show everything, write nothing (no reviews).")] = (
        False
    ),
    artifacts: Annotated[
        list[Path] | None,
        typer.Option("--artifacts", help="Folder of mask renders, bias reports (repeatable; default $PREFSMITH_HOME)"),
    ] = None,
    reviewer: Annotated[str | None, typer.Option(help="Name review forms start with (default: your user name)")] = None,
) -> None:
    """Browse, review and explain runs, pairs, token masks and bias reports in a web browser.

    The token for a non-loopback --host is read from $PREFSMITH_UI_TOKEN (never a flag: flags show in `ps`);
    when it is set, it is required on loopback too."""
    import getpass

    import uvicorn

    from storage.db import redact_url, resolve_db_url
    from storage.folders import prefsmith_home
    from storage.migrate import open_database
    from ui.app import UiSettings, create_app
    from ui.security import is_loopback, serving_token

    token = serving_token(host, os.environ)
    if not 0 < port < 65536:
        raise PrefsmithError(f"--port {port} is not a TCP port")
    roots = [folder.expanduser().resolve() for folder in artifacts or []]
    for folder in roots:
        if not folder.is_dir():
            raise PrefsmithError(f"--artifacts {folder}: no such folder")
    engine = open_database(db)
    settings = UiSettings(engine, read_only=read_only, token=token, artifacts=roots or [prefsmith_home()],
                          reviewer=reviewer or getpass.getuser())
    shown = "localhost" if is_loopback(host) else host
    say(f"prefsmith ui: http://{shown}:{port}/ on {redact_url(resolve_db_url(db))}"
        + (" (read-only)" if read_only else "") + (" (token required)" if token else ""))
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    finally:
        engine.dispose()

