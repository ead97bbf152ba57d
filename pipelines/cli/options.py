"""Options several commands share: the database, config overrides, the config, the Ray address, the BLS table.

Each is an `Annotated` type, so a command's signature reads as if the option were written out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL (default: $PREFSMITH_DB, else SQLite under $PREFSMITH_HOME)."),
]


SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config field: KEY=VALUE (repeatable).")]


ConfigOption = Annotated[str, typer.Option("--config", "-c", help="YAML config file or preset name.")]


AddressOption = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
]

TableOption = Annotated[Path, typer.Option("--labor-table", help="CPS table 11 file (.xlsx or .csv).")]

