"""`prefsmith runs list|show|audit`: the synthesis runs a database holds.

Counts per run, for one run its pair quality and who is playing it, and an audit of its accepted pairs with
today's verifiers.
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



def _print_audit(report: dict) -> None:
    console.print(
        f"run {report['run_id']}: {report['pairs']} accepted pairs re-checked with "
        f"{', '.join(report['tools']) or 'no tools'}", markup=False,
    )
    table = Table(show_header=False, box=None)
    table.add_row("verified now", f"{report['verified']} (stored as verified: {report['stored_verified']})")
    table.add_row("not verified now", str(report["not_verified"]))
    table.add_row("no verdict", f"{report['no_verdict']} (no tool judges these prompts' answers)")
    console.print(table)
    failing = [audit for audit in report["pair_audits"] if audit["status"] == "not_verified"]
    unchecked = [audit for audit in report["pair_audits"] if audit["status"] == "no_verdict" and audit["problems"]]
    for heading, audits in (("not verified now (pair id, prompt, the check that fails now)", failing),
                            ("no verdict because a tool could not check (pair id, prompt, why)", unchecked)):
        if audits:
            console.print(f"\n{heading}:")
        for audit in audits:  # unwrapped: a pair id is copied from here to `prefsmith ui` or the export
            prompt = " ".join(audit["prompt"].split())
            console.print(f"  {audit['pair_id']}", markup=False, soft_wrap=True)
            console.print(f"    prompt: {prompt[:100]}{'…' if len(prompt) > 100 else ''}", markup=False, soft_wrap=True)
            for problem in audit["problems"]:
                console.print(f"    {problem}", markup=False, soft_wrap=True)


@runs_app.command("audit")
def runs_audit(
    run: Annotated[str, typer.Argument(help="Run id.")],
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    tool: Annotated[
        list[str] | None,
        typer.Option("--tool", help="Check with this tool instead of the run's enabled ones (repeatable)."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Pairs checked at a time.")] = 8,
    record: Annotated[
        bool, typer.Option("--record", help="Keep the summary in the run's metrics (default: read only).")
    ] = False,
) -> None:
    """Re-check a run's accepted pairs with today's verifiers (the tools the judge would run on each prompt,
    from the run's tool settings): how many would still be verified, and the check each other one fails now."""
    from pipelines.audit import audit_run
    from storage.migrate import open_database

    engine = open_database(db)
    try:
        report = audit_run(engine, run, tool_names=tool, workers=workers, record=record).as_dict()
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_audit(report)
