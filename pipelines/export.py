"""Export of a run's accepted pairs as a versioned preference set.

An export is a folder: the data in TRL's explicit-prompt conversational format (`prompt`, `chosen`,
`rejected` as message lists, plus score and lineage columns) and a `manifest.json`; an `exports` row
records it. The folder appears whole or not at all. Reading one back lives in storage/preference_sets.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from configs.errors import ExportError
from storage.db import session_scope
from storage.folders import check_slug, folder_written_whole, prefsmith_home
from storage.models import Export
from storage.preference_sets import (
    DATA_FILES,
    EXPORT_COLUMNS,
    FORMATS,
    MANIFEST,
    REQUIRED_COLUMNS,
    ExportFormat,
    preference_row,
    read_manifest,
    write_data,
    write_manifest,
)
from storage.queries import accepted_pairs, get_run, next_export_version


@dataclass(frozen=True)
class ExportResult:
    id: str
    version: int
    path: Path
    num_pairs: int
    content_hash: str
    manifest: dict[str, Any]


def export_id_for(run_id: str, version: int) -> str:
    return f"{run_id}@v{version}"


def to_trl_row(pair: dict[str, Any], run_id: str, config_hash: str, *, grounded: bool = False) -> dict[str, Any]:
    """One accepted pair as a TRL conversational preference row with its lineage; `grounded` (a run of
    occupation prompts) adds the occupation and dimension each pair is about, which the debiasing trainer reads."""
    lineage = {"run_id": run_id, "config_hash": config_hash}
    columns = {name: lineage[name] if name in lineage else pair[name] for name in EXPORT_COLUMNS}
    row = preference_row(pair["messages"], pair["chosen"], pair["rejected"], **columns)
    if "review" in pair:
        row["review"] = pair["review"]
    if grounded:
        row["occupation"], row["dimension"] = pair["occupation"], pair["dimension"]
    return row


def content_hash(rows: list[dict[str, Any]]) -> str:
    """sha256 over the rows' canonical JSON: two exports with the same pairs have the same hash."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(f"{out} already exists and is not empty; pass --force to replace it")
        if not (out / MANIFEST).is_file():
            raise ExportError(f"{out} is not a prefsmith export (no {MANIFEST}); --force replaces only an export")
        read_manifest(out)  # a manifest that is not ours is refused the same way, with its reason
    if not out.parent.exists():
        raise ExportError(f"cannot write {out}: folder {out.parent} does not exist")


def default_export_dir(run_id: str, version: int) -> Path:
    """Where an export without a destination (`quickstart`, `refresh`) goes: under $PREFSMITH_HOME/exports,
    never over an existing folder (another database may have used the same run id and version)."""
    folder = prefsmith_home() / "exports" / f"{check_slug(run_id, 'run id')}-v{version}"
    if folder.exists() and any(folder.iterdir()):
        folder = folder.with_name(f"{folder.name}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


# How often an export retries with the next version when concurrent exports of the same run took its own.
_VERSION_ATTEMPTS = 8


def export_run(
    engine: Engine,
    run_id: str,
    out: str | Path | None = None,
    *,
    fmt: ExportFormat = "parquet",
    min_score: float | None = None,
    force: bool = False,
    reviewed: bool = False,
    require_verified: bool = False,
) -> ExportResult:
    """Write run `run_id`'s accepted pairs (reward ≥ `min_score`) as its next export version and record an
    `exports` row; to `out`, or with no `out` to a new folder named after the run and version. Exports of
    one run made at the same time get distinct versions. With `reviewed`, people's reviews are honoured:
    pairs reviewed `rejected` are left out, `flipped` ones swapped (storage.queries.accepted_pairs). With
    `require_verified`, only pairs whose chosen answer passed its tools' checks and rejected answer failed."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (use one of {', '.join(FORMATS)})")
    with session_scope(engine) as session:
        config_hash = get_run(session, run_id).config_hash
        pairs = accepted_pairs(session, run_id, min_score, reviewed=reviewed, require_verified=require_verified)
    grounded = any(p["occupation"] is not None for p in pairs)
    rows = [to_trl_row(p, run_id, config_hash, grounded=grounded) for p in pairs]
    filters: dict[str, Any] = {"accepted": True, "min_score": min_score}
    filters |= ({"reviewed": True} if reviewed else {}) | ({"require_verified": True} if require_verified else {})
    for _ in range(_VERSION_ATTEMPTS):
        with session_scope(engine) as session:
            version = next_export_version(session, run_id)
        destination = Path(default_export_dir(run_id, version) if out is None else out).expanduser().resolve()
        try:
            _check_destination(destination, force)
        except ExportError:
            if out is not None:
                raise
            continue  # another export took this default folder after it was chosen: choose again
        try:
            return _write_export(engine, run_id, config_hash, version, rows, destination, fmt, filters, force)
        except IntegrityError:
            continue  # another export of this run took this version meanwhile: take the next one
        except FileExistsError as exc:
            if out is not None:
                raise ExportError(f"{destination} was written by another export meanwhile") from exc
            # two exports picked the same default folder at the same moment: the next version gets a new one
    raise ExportError(f"run {run_id!r}: other exports kept taking the next version; try again")


def _write_export(
    engine: Engine,
    run_id: str,
    config_hash: str,
    version: int,
    rows: list[dict[str, Any]],
    out: Path,
    fmt: ExportFormat,
    filters: dict[str, Any],
    force: bool,
) -> ExportResult:
    """One export version: the data and its manifest in `out`, and its `exports` row."""
    digest = content_hash(rows)
    export_id = export_id_for(run_id, version)
    manifest = {
        "id": export_id,
        "version": version,
        "run_id": run_id,
        "config_hash": config_hash,
        "format": fmt,
        "data": DATA_FILES[fmt],
        "filters": filters,
        "counts": {"pairs": len(rows), "prompts": len({r["prompt_id"] for r in rows})},
        "content_hash": digest,
        "models": {
            role: sorted({r[f"{role}_model"] for r in rows}) for role in ("target", "judge", "reward")
        },
        "columns": list(REQUIRED_COLUMNS)
        + [c for c in (rows[0] if rows else {}) if c not in REQUIRED_COLUMNS],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "prefsmith_version": metadata.version("prefsmith"),
    }

    # The folder is swapped in only once the row is accepted (flushed), and the row is committed only once the
    # folder is in place: a failure of either leaves neither behind.
    with session_scope(engine) as session, folder_written_whole(out, replace=force) as staging:
        write_data(rows, staging, fmt)
        write_manifest(staging, manifest)
        session.add(
            Export(
                id=export_id,
                run_id=run_id,
                version=version,
                path=str(out),
                format=fmt,
                filters=manifest["filters"],
                num_pairs=len(rows),
                content_hash=digest,
                manifest=manifest,
            )
        )
        session.flush()
    return ExportResult(
        id=export_id, version=version, path=out, num_pairs=len(rows), content_hash=digest, manifest=manifest
    )
