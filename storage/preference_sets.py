"""Preference sets as `prefsmith export` lays them out on disk, and reading one back for the trainers.

A set is a folder: a `manifest.json` and the data in one of `FORMATS`. Writing one composes a run, the
database and the filesystem (pipelines/export.py); reading one needs only this layer, so that `training`
never reaches up into `pipelines`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from configs.errors import ExportError
from storage.db import session_scope
from storage.migrate import open_database
from storage.queries import get_export

if TYPE_CHECKING:
    from datasets import Dataset

ExportFormat = Literal["parquet", "jsonl", "hf"]
FORMATS: tuple[str, ...] = ("parquet", "jsonl", "hf")
DATA_FILES = {"parquet": "data.parquet", "jsonl": "data.jsonl", "hf": "data"}
MANIFEST = "manifest.json"
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


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
