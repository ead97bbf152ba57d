"""`prefsmith runs list|show`: the synthesis runs a database holds.

Counts per run, and for one run its pair quality and who is playing it.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.options import DbOption
from pipelines.cli.terminal import console

runs_app = typer.Typer(help="What is stored: synthesis runs and their counts.", no_args_is_help=True)


def _print_summary(summary: dict) -> None:
    table = Table(show_header=False, box=None)
    for key in (
        "id",
        "status",
        "config_hash",
        "created_at",
        "prompts",
        "episodes",
        "episodes_done",
        "rounds",
        "pairs",
        "accepted_pairs",
        "verified_pairs",
        "failures",
        "mastered",
        "out_of_reach",
        "target_tokens",
        "verified_per_1k_tokens",
        "exports",
        "current_prompt_versions",
        "target_model",
        "played_by",
    ):
        table.add_row(key, str(summary.get(key)))
    for key, value in summary.get("metrics", {}).items():
        table.add_row(f"metrics.{key}", str(value))
    quality = summary.get("pair_quality")
    if quality is not None:
        share = "" if quality["share"] is None else f" ({quality['share']:.0%})"
        table.add_row("correct_over_wrong", f"{quality['correct_over_wrong']} of {quality['accepted']} accepted{share}")
        agreement = quality["reward_vs_verdicts"]
        table.add_row(
            "reward_vs_verdicts",
            "no graded pair with verdicts on both answers"
            if agreement["rate"] is None
            else f"agreed on {agreement['agree']} of {agreement['pairs']} graded pairs ({agreement['rate']:.0%})",
        )
    console.print(table)


@runs_app.command("list")
def runs_list(db: DbOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the runs stored in the database, with their counts."""
    from storage.db import session_scope
    from storage.migrate import open_database
    from storage.queries import list_runs

    engine = open_database(db)
    try:
        with session_scope(engine) as session:
            summaries = [s.as_dict() for s in list_runs(session)]
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(summaries, indent=2))
        return
    if not summaries:
        console.print("no runs yet (start one with `prefsmith quickstart` or `prefsmith synthesize`)")
        return
    table = Table("run", "config hash", "status", "prompts", "episodes", "rounds", "accepted", "failures")
    for s in summaries:
        table.add_row(
            s["id"],
            s["config_hash"][:12],
            s["status"],
            str(s["prompts"]),
            str(s["episodes"]),
            str(s["rounds"]),
            str(s["accepted_pairs"]),
            str(s["failures"]),
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id.")],
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one run: counts of prompts, episodes, rounds, accepted pairs, failures; its config hash."""
    from storage.db import session_scope
    from storage.leases import holder_of
    from storage.migrate import open_database
    from storage.queries import pair_quality, run_summary, run_target_model

    engine = open_database(db)
    try:
        with session_scope(engine) as session:
            summary = run_summary(session, run).as_dict()
            summary["pair_quality"] = pair_quality(session, run)
            summary["target_model"] = run_target_model(session, run)
            holder = holder_of(session, run)
            if holder is not None:
                summary["played_by"] = f"{holder[0]}, lease renewed until {holder[1]:%Y-%m-%d %H:%M:%S} UTC"
            elif summary["status"] == "running":
                summary["played_by"] = "nobody: its synthesizer stopped without finishing; rerun to resume"
            else:
                summary["played_by"] = "nobody"
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)

