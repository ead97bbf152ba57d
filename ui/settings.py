"""What a UI serves and how: the database, read-only mode, the token, the artifact folders, the reviewer's name.

`create_app` keeps them on `app.state`; a route asks for them with the `Settings` dependency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine


@dataclass
class UiSettings:
    engine: Engine
    read_only: bool = False
    token: str | None = None  # required on every request when set
    artifacts: list[Path] = field(default_factory=list)  # folders searched for mask renders and bias reports
    reviewer: str = "reviewer"  # the name a review form starts with


async def settings_of(request: Request) -> UiSettings:
    """The settings of the app serving `request` (async: a lookup needs no worker thread)."""
    settings: UiSettings = request.app.state.settings
    return settings


Settings = Annotated[UiSettings, Depends(settings_of)]
