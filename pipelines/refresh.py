"""Dataset refresh: play only the prompts no run with this config hash has played (nor any run retired for its
target model), then export a new version.

What `prefsmith refresh` runs, by hand or from a schedule; a refresh that finds nothing new writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.schema import SynthesisConfig
from pipelines.export import ExportResult, export_run
from pipelines.synthesis.run import SynthesisReport
from pipelines.synthesis.service import synthesize
from storage.migrate import open_database
from storage.preference_sets import ExportFormat


@dataclass(frozen=True)
class RefreshResult:
    report: SynthesisReport
    export: ExportResult | None  # None when the run was interrupted or there was nothing new to play


def refresh(
    config: SynthesisConfig,
    *,
    db_url: str | None = None,
    out: str | Path | None = None,
    fmt: ExportFormat = "parquet",
    address: str | None = None,
    progress: Any = None,
    log: Callable[[str], None] = print,
    include_retired: bool = False,
) -> RefreshResult:
    """Play the new prompts of `config`'s sources, then export the run's next version to `out` (default:
    a new folder under $PREFSMITH_HOME/exports); `log` receives one line per finished stage. Prompts the target
    model mastered or found out of reach in any run are left out, unless `include_retired`."""
    url = db_url or config.storage.url
    retired_by = () if include_retired else (config.models[config.roles.target].name,)
    report = synthesize(
        config, db_url=url, address=address, only_unplayed=True, progress=progress, skip_retired_by=retired_by
    )
    if report.interrupted:
        log(report.summary())
        return RefreshResult(report, None)
    if report.metrics.episodes_total == 0:
        log(
            f"nothing to refresh: all {report.prompts_total} prompts were already played under config "
            f"hash {report.config_hash[:12]}; no new export written"
        )
        return RefreshResult(report, None)
    log(report.summary())
    engine = open_database(url)
    try:
        result = export_run(engine, report.run_id, out, fmt=fmt)
    finally:
        engine.dispose()
    log(f"export {result.id}: {result.num_pairs} pairs → {result.path}")
    return RefreshResult(report, result)
