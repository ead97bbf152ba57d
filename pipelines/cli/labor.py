"""`prefsmith labor fetch|show`: BLS labor statistics (CPS table 11).

Download the table into the cache, and print what the reader makes of a table file.
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
# Wide enough for a row of table 11 (a title and seven shares) on one line wherever the output goes.
console = Console(soft_wrap=True, width=160)

TableArgument = Annotated[Path, typer.Argument(help="CPS table 11 file (.xlsx, raw BLS CSV or cleaned CSV).")]


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

