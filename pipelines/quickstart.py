"""The README's main job on embedded defaults (`prefsmith quickstart`, `make demo`): prepare the small model
and the database, play the built-in prompts on a local Ray, export the accepted pairs, summarise the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.catalog import prepare
from configs.schema import SynthesisConfig
from pipelines.export import ExportResult, export_run
from pipelines.synthesis.run import SynthesisReport
from pipelines.synthesis.service import synthesize
from storage.db import redact_url, resolve_db_url, session_scope
from storage.migrate import open_database, upgrade
from storage.queries import run_summary


@dataclass(frozen=True)
class QuickstartResult:
    report: SynthesisReport
    export: ExportResult | None  # None when the run was interrupted


def quickstart(
    config: SynthesisConfig,
    *,
    db_url: str | None = None,
    progress: Any = None,
    log: Callable[[str], None] = print,
) -> QuickstartResult:
    """Run the four stages in order; `log` receives one line per finished stage and a closing summary.

    Every stage is idempotent: a rerun reuses the model and the database and resumes the same run.
    """
    url = db_url or config.storage.url
    model_name = config.models[config.roles.target].name
    started = time.perf_counter()
    folder = prepare(model_name)
    log(f"[1/4] model {model_name}: ready at {folder} ({time.perf_counter() - started:.1f} s)")
    # Only the embedded default database gets its folder created; a mistyped explicit path is an error.
    revision = upgrade(url, create_dirs=url is None)
    log(f"[2/4] database {redact_url(resolve_db_url(url))}: schema revision {revision}")
    report = synthesize(config, db_url=url, progress=progress)
    log(f"[3/4] {report.summary()}")
    if report.interrupted:
        return QuickstartResult(report, None)
    engine = open_database(url)
    try:
        result = export_run(engine, report.run_id)
        with session_scope(engine) as session:
            summary = run_summary(session, report.run_id)
    finally:
        engine.dispose()
    log(f"[4/4] export {result.id}: {result.num_pairs} accepted pairs → {result.path}")
    log(
        f"run {summary.id}: {summary.prompts} prompts, {summary.episodes_done} episodes done, {summary.rounds} "
        f"rounds, {summary.pairs} pairs decided, {summary.accepted_pairs} accepted ({summary.verified_pairs} verified "
        f"correct over wrong by the tools), {summary.failures} failed. "
        f"Next: `prefsmith runs show {summary.id}`, `prefsmith train sparsepo --data {result.id} --out OUT`."
    )
    return QuickstartResult(report, result)
