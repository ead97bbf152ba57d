"""`prefsmith synthesize|refresh|schedule|quickstart|export`: making preference data and writing it out.

Playing a run's prompts on Ray, playing only new ones, firing a command on a cron schedule, the README's main
job, and a run's pairs as a versioned preference set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.options import AddressOption, ConfigOption, DbOption, SetOption
from pipelines.cli.terminal import EpisodeProgress, console, say

if TYPE_CHECKING:
    from pipelines.synthesis.run import SynthesisReport

def export(
    run: Annotated[str, typer.Option("--run", help="Run id to export.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must not exist, or be empty).")],
    min_score: Annotated[float | None, typer.Option("--min-score", help="Keep pairs with reward ≥ N.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet, jsonl or hf.")] = "parquet",
    force: Annotated[bool, typer.Option(help="Replace an existing export folder.")] = False,
    reviewed: Annotated[
        bool, typer.Option("--reviewed", help="Honour reviews (`prefsmith ui`): drop rejected pairs, swap flipped.")
    ] = False,
    require_verified: Annotated[
        bool, typer.Option("--require-verified", help="Keep only pairs whose tools passed chosen, failed rejected.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Write a run's accepted pairs as a versioned preference set in TRL's conversational format."""
    from pipelines.export import export_run
    from storage.migrate import open_database

    engine = open_database(db)
    try:
        result = export_run(
            engine,
            run,
            out,
            fmt=fmt,  # type: ignore[arg-type]
            min_score=min_score,
            force=force,
            reviewed=reviewed,
            require_verified=require_verified,
        )
    finally:
        engine.dispose()
    console.print(
        f"export {result.id}: {result.num_pairs} pairs → {result.path} ({fmt}, content hash {result.content_hash[:12]})"
    )


# A run stopped by a fault it could not play through (database down, lease taken over, engine dying): "try
# again later" (sysexits EX_TEMPFAIL); a rerun resumes it.
EXIT_STOPPED_BY_FAULT = 75


def _exit_if_interrupted(report: SynthesisReport) -> None:
    """A run stopped by a signal exits as the shell reports it: 128 + SIGINT (2) or SIGTERM (15); one
    stopped by a fault exits 75."""
    if report.interrupted:
        codes = {"SIGINT": 130, "SIGTERM": 143}
        raise typer.Exit(codes.get(report.interrupted, EXIT_STOPPED_BY_FAULT))


def synthesize_command(
    config: ConfigOption = "quickstart",
    set_: SetOption = None,
    db: DbOption = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="Run id (default: run-<config hash>).")] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            help="The run plays at most N prompts of its sources in all (the first N, fixed when first played: a "
            "rerun of the same command picks no new ones; a larger N adds more).",
        ),
    ] = None,
    address: AddressOption = None,
) -> None:
    """Play every pending prompt of a run on Ray and store the result; a rerun resumes."""
    from configs.loading import load_config
    from pipelines.synthesis.service import synthesize

    report = synthesize(
        load_config(config, set_ or []),
        run_id=run_name,
        db_url=db,
        limit=limit,
        address=address,
        progress=EpisodeProgress(),
    )
    say(report.summary())
    if report.interrupted:
        say("rerun the same command to resume.")
    _exit_if_interrupted(report)


def refresh_command(
    config: ConfigOption = "quickstart",
    set_: SetOption = None,
    db: DbOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder of the new export (default: under $PREFSMITH_HOME).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet, jsonl or hf.")] = "parquet",
    address: AddressOption = None,
    include_retired: Annotated[
        bool, typer.Option("--include-retired", help="Play prompts the target model mastered or found out of reach.")
    ] = False,
) -> None:
    """Play only prompts no run with this config hash has played, then write a new export version."""
    from configs.loading import load_config
    from pipelines.refresh import refresh

    result = refresh(
        load_config(config, set_ or []),
        db_url=db,
        out=out,
        fmt=fmt,  # type: ignore[arg-type]
        address=address,
        progress=EpisodeProgress(),
        log=say,
        include_retired=include_retired,
    )
    _exit_if_interrupted(result.report)


# `prefsmith schedule --cron … -- ARGS…`: everything after `--` is the command it fires, options included.
SCHEDULE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}


def schedule_command(
    ctx: typer.Context,
    cron: Annotated[str, typer.Option("--cron", help="5 fields, or 6 with seconds first.")],
    address: Annotated[
        str | None, typer.Option("--address", help="Ray dashboard address: submit each run as a Ray job.")
    ] = None,
    max_fires: Annotated[int | None, typer.Option("--max-fires", min=1, help="Stop after N fires.")] = None,
) -> None:
    """Run `prefsmith ARGS…` (after `--`) on a cron schedule; a fire is refused while the last run goes on."""
    from pipelines.schedule import run_schedule

    report = run_schedule(
        cron,
        list(ctx.args),
        address=address,
        max_fires=max_fires,
        working_dir=os.getcwd(),
        log=lambda line: console.print(line, markup=False),
    )
    console.print(
        f"schedule: {report.fired} fires, {report.started} runs started, {report.refused_overlap} refused "
        f"(overlap); outcomes: {', '.join(report.outcomes) or 'none'}",
        markup=False,
    )


def quickstart(db: DbOption = None, set_: SetOption = None) -> None:
    """The README's main job on embedded defaults: prepare the small model and the database, play the
    built-in arithmetic prompts on a local Ray, export the accepted pairs, print a summary."""
    from configs.loading import load_config
    from pipelines.quickstart import quickstart as run_quickstart

    result = run_quickstart(load_config("quickstart", set_ or []), db_url=db, progress=EpisodeProgress(), log=say)
    _exit_if_interrupted(result.report)

