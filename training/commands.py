"""The `prefsmith train …` and `prefsmith inspect …` command groups (mounted by pipelines/cli.py).

Import stays light: torch, transformers and TRL are imported inside the commands, not at CLI start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

train_app = typer.Typer(help="Train models on exported preference sets.", no_args_is_help=True)
inspect_app = typer.Typer(help="Look inside trained models.", no_args_is_help=True)


@train_app.command("sparsepo")
def sparsepo(
    data: Annotated[str, typer.Option("--data", help="Export id, or a folder written by `prefsmith export`.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: checkpoints, final model and masks.")],
    config: Annotated[str, typer.Option("--config", help="YAML config file or preset name.")] = "train_sparsepo",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value, e.g. --set extra.l1_u=0.01.")
    ] = None,
    ray_workers: Annotated[
        int, typer.Option("--ray-workers", min=0, help="Train on N Ray Train workers (0: this process).")
    ] = 0,
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint in --out.")] = True,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (to resolve an export id).")] = None,
) -> None:
    """SparsePO (token-masked TDPO) on an exported preference set."""
    from training.train import load_job, train_local, train_on_ray

    job = load_job(config, overrides or [], data, out, db)
    if ray_workers:
        summary = train_on_ray(job, ray_workers, resume=resume)
    else:
        summary = train_local(job, resume=resume)
    resumed = f" (resumed from {summary['resumed_from']})" if summary["resumed_from"] else ""
    typer.echo(f"trained {summary['global_step']} steps{resumed}; model and masks in {job.out_dir}")


@inspect_app.command("masks")
def masks(
    model: Annotated[Path, typer.Option("--model", help="A folder written by `prefsmith train sparsepo`.")],
    data: Annotated[str, typer.Option("--data", help="Export id or folder whose pairs are shown.")],
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="How many pairs to show.")] = 3,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write masks.html/png (default: MODEL).")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (to resolve an export id).")] = None,
) -> None:
    """Render the chosen and rejected tokens of a few pairs coloured by their mask weight (HTML and PNG)."""
    from storage.preference_sets import load_preference_set
    from training.inspect_masks import inspect_masks

    written = inspect_masks(model, load_preference_set(data, db), out or model, pairs)
    for path in written:
        typer.echo(str(path))
