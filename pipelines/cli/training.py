"""`prefsmith train sparsepo|debias` and `prefsmith inspect masks`: the trainers and a trained model's masks.

Torch, transformers and TRL are imported inside the commands, not at CLI start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.options import TableOption
from pipelines.cli.terminal import console

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
    from training.train import load_trainer_from_file, train_on_ray

    trainer = load_trainer_from_file("sparsepo", config, overrides or [], data, out, db_url=db)
    summary = train_on_ray(trainer, ray_workers, resume=resume) if ray_workers else trainer.train(resume=resume)
    resumed = f" (resumed from {summary.resumed_from})" if summary.resumed_from else ""
    typer.echo(f"trained {summary.global_step} steps{resumed}; model and masks in {trainer.job.out_dir}")


@train_app.command("debias")
def train_debias(
    data: Annotated[str, typer.Option("--data", help="Export folder or id of grounded preference pairs.")],
    labor_table: TableOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained model and split.json.")],
    config: Annotated[
        str, typer.Option("--config", "-c", help="Training YAML file or preset name.")
    ] = "train_debias",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config field: KEY=VALUE.")
    ] = None,
) -> None:
    """DPO on exported pairs + λ·KL(BLS ‖ model) on multiple-choice probes of training occupations."""
    from training.debias import DebiasSummary
    from training.train import load_trainer_from_file

    run = load_trainer_from_file("debias", config, set_ or [], data, out, labor_table=labor_table).train()
    assert isinstance(run, DebiasSummary)
    last = [h for h in run.log_history if "loss" in h]
    tail = f", last loss {last[-1]['loss']:.4f}" if last else ""
    console.print(
        f"debiased model → {out} ({len(run.train_occupations)} train / "
        f"{len(run.held_out_occupations)} held-out occupations{tail}"
        + (f"; {run.pairs_left_out} pairs about held-out occupations left out" if run.pairs_left_out else "")
        + ")",
        markup=False,
    )


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

