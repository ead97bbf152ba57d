"""The runs pages: every run with its counts (newest first), and one run with its config, prompt versions,
exports and metric series.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from configs.secrets import masked
from storage.browse import run_exports, run_prompt_versions, run_series
from storage.db import session_scope
from storage.queries import get_run, list_runs, run_summary
from ui.pages import page
from ui.settings import Settings

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def runs(request: Request, settings: Settings) -> HTMLResponse:
    with session_scope(settings.engine) as session:
        summaries = [s.as_dict() for s in list_runs(session)]
    return page(request, "runs.html", runs=list(reversed(summaries)))


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run(request: Request, run_id: str, settings: Settings) -> HTMLResponse:
    with session_scope(settings.engine) as session:
        summary = run_summary(session, run_id).as_dict()
        config = masked(get_run(session, run_id).config)
        versions = run_prompt_versions(session, run_id)
        exports = run_exports(session, run_id)
        series = run_series(session, run_id)
    return page(
        request,
        "run.html",
        run=summary,
        config=json.dumps(config, indent=2, ensure_ascii=False),
        versions=versions,
        exports=exports,
        series=series,
    )
