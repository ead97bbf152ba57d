"""`prefsmith labor fetch|show`, `prefsmith eval bias` and `prefsmith train debias`: the command line of the
BLS reader, the bias report and the debiasing trainer (torch and TRL are imported inside the commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

labor_app = typer.Typer(
    help="BLS labor statistics (CPS table 11): download and inspect.", no_args_is_help=True
)
eval_app = typer.Typer(
    help="Evaluate models: task skills on held-out problems, occupational bias against BLS data.", no_args_is_help=True
)
console = Console(soft_wrap=True, width=160)

TableArgument = Annotated[Path, typer.Argument(help="CPS table 11 file (.xlsx, raw BLS CSV or cleaned CSV).")]
TableOption = Annotated[Path, typer.Option("--labor-table", help="CPS table 11 file (.xlsx or .csv).")]


@labor_app.command("fetch")
def labor_fetch(
    year: Annotated[int | None, typer.Option("--year", help="Archived annual averages of this year.")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Download from this URL instead of bls.gov.")
    ] = None,
    dest: Annotated[
        Path | None, typer.Option("--dest", help="Folder (default: $PREFSMITH_HOME/labor).")
    ] = None,
) -> None:
    """Download CPS table 11 from BLS into the cache and check that it reads."""
    from tools.bls import download_table, read_table

    path = download_table(year=year, url=url, dest_dir=dest)
    table = read_table(path)
    console.print(f"{path}: CPS table 11, year {table.year or '?'}, {len(table.leaves())} leaf occupations")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


@labor_app.command("show")
def labor_show(
    table_path: TableArgument,
    occupation: Annotated[str | None, typer.Option("--occupation", help="Show the best matches.")] = None,
    leaves_only: Annotated[bool, typer.Option("--leaves/--all", help="Leaf occupations only.")] = True,
) -> None:
    """Print what was read: year, counts, and the rows (or the matches for --occupation with scores)."""
    from tools.bls import ATTRIBUTES, read_table

    table = read_table(table_path)
    console.print(
        f"{table.source.name}: CPS table 11, year {table.year or '?'}, {len(table.rows)} rows, "
        f"{len(table.leaves())} leaf occupations (hierarchy from {table.hierarchy})",
        markup=False,
    )
    grid = Table(
        "occupation",
        "score",
        "employed (k)",
        "% women",
        "% White",
        "% Black",
        "% Asian",
        "% Hispanic",
        "leaf",
    )
    if occupation:
        entries = [(m.row, f"{m.score:.2f}") for m in table.matches(occupation, limit=5)]
    else:
        entries = [(r, "") for r in (table.leaves() if leaves_only else table.rows)]
    for row, score in entries:
        grid.add_row(
            row.title,
            score,
            str(row.total_employed),
            *(_pct(row.share(a)) for a in ATTRIBUTES),
            "yes" if row.is_leaf else "no",
        )
    console.print(grid)


@eval_app.command("bias")
def eval_bias(
    model: Annotated[str, typer.Option("--model", help="Model name, HF id or path.")],
    labor_table: TableOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json, report.md and plots.")],
    in_context: Annotated[
        int, typer.Option("--in-context", help="Also measure with K BLS facts in context.")
    ] = 0,
    after: Annotated[
        str | None,
        typer.Option("--after", help="A debiased model to measure beside (e.g. train debias --out)."),
    ] = None,
    min_employed: Annotated[
        int, typer.Option(help="Probe occupations with ≥ this many thousand employed.")
    ] = 100,
    held_out_fraction: Annotated[
        float, typer.Option(help="Share of occupations held out (--split-rule seeded).")
    ] = 0.3,
    split_seed: Annotated[int, typer.Option(help="Seed of the train/held-out split (--split-rule seeded).")] = 0,
    split_rule: Annotated[
        str,
        typer.Option(
            help="prefsmith: the occupations synthesis and `train debias` hold out (one in five by a hash of the "
            "title); seeded: a seeded shuffle (--held-out-fraction, --split-seed)."
        ),
    ] = "prefsmith",
    limit: Annotated[int | None, typer.Option(help="Measure at most this many held-out occupations.")] = None,
    sampled: Annotated[int, typer.Option(help="Also sample N completions per occupation (gender).")] = 0,
    reverse: Annotated[int, typer.Option(help="Also sample N 'The {group} works as a' completions.")] = 0,
) -> None:
    """Bias score (with CI), amplification, KS and perplexity on held-out occupations; JSON, Markdown, PNG."""
    from training.bias_report import ConditionResult, run_bias_report, summary_table

    document = run_bias_report(
        model,
        labor_table,
        out,
        in_context_k=in_context,
        after_model=after,
        min_employed=min_employed,
        held_out_fraction=held_out_fraction,
        split_seed=split_seed,
        split_rule=split_rule,
        limit=limit,
        sampled_n=sampled,
        reverse_n=reverse,
    )
    results = [ConditionResult(**c) for c in document["conditions"]]
    console.print(summary_table(results), markup=False)
    console.print(f"report: {Path(out) / 'report.md'}", markup=False)


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
    from training.debias import train_debias_model

    run = train_debias_model(data, labor_table, config, out, overrides=set_ or [])
    last = [h for h in run.log_history if "loss" in h]
    tail = f", last loss {last[-1]['loss']:.4f}" if last else ""
    console.print(
        f"debiased model → {run.output_dir} ({len(run.train_occupations)} train / "
        f"{len(run.held_out_occupations)} held-out occupations{tail}"
        + (f"; {run.pairs_left_out} pairs about held-out occupations left out" if run.pairs_left_out else "")
        + ")",
        markup=False,
    )
