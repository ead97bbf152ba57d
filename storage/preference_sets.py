"""Preference sets as `prefsmith export` lays them out on disk: the row format, writing the data and manifest of
a folder, and reading one back for the trainers.

A set is a folder: a `manifest.json` and the data in one of `FORMATS`. Choosing what goes into one composes a run,
the database and the filesystem (pipelines/export.py, pipelines/pair_sources.py); the format and reading one back
need only this layer, so that `training` never reaches up into `pipelines`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from configs.errors import ExportError
from storage.db import session_scope
from storage.migrate import open_database
from storage.queries import get_export

if TYPE_CHECKING:
    import pyarrow as pa
    from datasets import Dataset

ExportFormat = Literal["parquet", "jsonl", "hf"]
FORMATS: tuple[str, ...] = ("parquet", "jsonl", "hf")
DATA_FILES = {"parquet": "data.parquet", "jsonl": "data.jsonl", "hf": "data"}
MANIFEST = "manifest.json"
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
# The lineage columns an export of a run always writes after REQUIRED_COLUMNS, in this order.
EXPORT_COLUMNS = (
    "score",
    "accepted_by",
    "chosen_verified",
    "rejected_verified",
    "chosen_finish",  # how each side's completion ended (`stop`, or `length`: cut off at max_tokens)
    "rejected_finish",
    "chosen_score",
    "rejected_score",
    "pair_id",
    "prompt_id",
    "run_id",
    "config_hash",
    "round_index",
    "target_prompt_version",
    "judge_prompt_version",
    "target_model",
    "judge_model",
    "reward_model",
    "pass_rate",  # the prompt's estimated pass rate under its tools' verdicts, and the samples it rests on
    "samples",
)


def preference_row(
    prompt: Sequence[dict[str, Any]], chosen: str, rejected: str, **columns: Any
) -> dict[str, Any]:
    """One pair in TRL's explicit-prompt conversational format (`prompt`, `chosen`, `rejected` as message lists),
    followed by `columns` (score, lineage, what the pair is about) in the order given."""
    return {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        **columns,
    }


def _column_types() -> dict[str, pa.DataType]:
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    floats = ("score", "chosen_score", "rejected_score", "pass_rate")
    integers = ("round_index", "target_prompt_version", "judge_prompt_version", "samples")
    booleans = ("chosen_verified", "rejected_verified")
    types = {name: message for name in REQUIRED_COLUMNS}
    for name in (*EXPORT_COLUMNS, "review", "occupation", "dimension"):
        types[name] = (
            pa.float64()
            if name in floats
            else pa.int64()
            if name in integers
            else pa.bool_()
            if name in booleans
            else pa.string()
        )
    return types


def arrow_schema(columns: Sequence[str]) -> pa.Schema:
    """The Arrow schema of a set with `columns` (each one a column a preference set may hold), in that order."""
    import pyarrow as pa

    types = _column_types()
    unknown = [c for c in columns if c not in types]
    if unknown:
        raise ExportError(f"no column type for preference set column(s) {', '.join(unknown)}")
    return pa.schema([(c, types[c]) for c in columns])


def write_data(rows: list[dict[str, Any]], folder: Path, fmt: str) -> None:
    """The data file of a set in `folder`: `rows` (of `preference_row`) as JSON lines, Parquet or a `datasets`
    folder; the columns are the first row's (an empty set has those of an export)."""
    target = folder / DATA_FILES[fmt]
    if fmt == "jsonl":
        with target.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    import pyarrow as pa

    columns = list(rows[0]) if rows else [*REQUIRED_COLUMNS, *EXPORT_COLUMNS]
    table = pa.Table.from_pylist(rows, schema=arrow_schema(columns))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, target)
    else:
        from datasets import Dataset

        Dataset(table).save_to_disk(str(target))


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{folder} is not a prefsmith export (no {MANIFEST})") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if manifest.get("format") not in FORMATS:
        raise ExportError(f"{path}: field 'format' must be one of {', '.join(FORMATS)}")
    return manifest


def export_folder(export: str | Path, db_url: str | None = None) -> Path:
    """The folder of `export`: the path itself when it is a folder, else the one the database recorded for
    that export id."""
    folder = Path(export).expanduser()
    if folder.is_dir():
        return folder
    engine = open_database(db_url)
    try:
        with session_scope(engine) as session:
            folder = Path(get_export(session, str(export)).path)
    finally:
        engine.dispose()
    if not folder.is_dir():
        raise ExportError(f"export {export!r} was written to {folder}, which no longer exists")
    return folder


def load_preference_set(export: str | Path, db_url: str | None = None) -> Dataset:
    """Load an export — a folder written by `prefsmith export`, or an export id from the database — as a
    `datasets.Dataset` that TRL's `DPOTrainer` takes as it is."""
    # datasets and pyarrow take seconds to import; only the commands that read data pay for them.
    from datasets import Dataset, load_from_disk

    folder = export_folder(export, db_url)
    manifest = read_manifest(folder)
    data = folder / manifest.get("data", DATA_FILES[manifest["format"]])
    if not data.exists():
        raise ExportError(f"{data} is missing from export {folder}")
    if manifest["format"] == "hf":
        dataset = load_from_disk(str(data))
    elif manifest["format"] == "parquet":
        import pyarrow.parquet as pq

        try:
            dataset = Dataset(pq.read_table(data))
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise ExportError(f"{data}: not a readable Parquet file ({exc})") from None
    else:
        rows = []
        with data.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ExportError(f"{data}:{lineno}: invalid JSON ({exc.msg})") from None
        dataset = Dataset.from_list(rows)
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing and len(dataset):
        raise ExportError(f"{data}: missing column(s) {', '.join(missing)}")
    return dataset
