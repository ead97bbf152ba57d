"""The `prefsmith` command line assembled: the root command, its commands and groups in the order `--help`
lists them, and `main`, which turns an error a user can cause into one line and a non-zero exit code.

Import stays light: each command imports what it runs (torch, Ray, SQLAlchemy, FastAPI) inside its body.
"""

from __future__ import annotations

import sys

import click
import typer

from configs.errors import PrefsmithError
from pipelines.cli.config import config_app
from pipelines.cli.db import db_app
from pipelines.cli.evaluation import eval_app
from pipelines.cli.labor import labor_app
from pipelines.cli.loop import iterate_command
from pipelines.cli.models import models_app
from pipelines.cli.runs import runs_app
from pipelines.cli.synthesis import (
    SCHEDULE_CONTEXT,
    export,
    quickstart,
    refresh_command,
    schedule_command,
    synthesize_command,
)
from pipelines.cli.tools import tools_app
from pipelines.cli.training import inspect_app, train_app
from pipelines.cli.ui import ui_command

app = typer.Typer(
    name="prefsmith",
    help="Synthesise preference data with agents (Anyprefer on Ray) and align models on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("export")(export)
app.command("synthesize")(synthesize_command)
app.command("iterate")(iterate_command)
app.command("refresh")(refresh_command)
app.command("schedule", context_settings=SCHEDULE_CONTEXT)(schedule_command)
app.command("quickstart")(quickstart)
app.command("ui")(ui_command)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(runs_app, name="runs")
app.add_typer(config_app, name="config")
app.add_typer(tools_app, name="tools")
app.add_typer(train_app, name="train")
app.add_typer(inspect_app, name="inspect")
app.add_typer(labor_app, name="labor")
app.add_typer(eval_app, name="eval")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="prefsmith", standalone_mode=False)
    except PrefsmithError as exc:
        message = " ".join(str(exc).split())
        print(f"prefsmith: error: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("prefsmith: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
