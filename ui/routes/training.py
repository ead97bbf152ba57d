"""The training and bias pages: the artifacts found under the UI's folders, a file served from one of them
under a sandboxing policy, and a bias report rendered as a page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from ui.artifacts import bias_report, find_artifacts, resolve_artifact
from ui.pages import page
from ui.security import ARTIFACT_CSP
from ui.settings import Settings

router = APIRouter()


@router.get("/training", response_class=HTMLResponse)
def training(request: Request, settings: Settings) -> HTMLResponse:
    return page(request, "training.html", found=find_artifacts(settings.artifacts), roots=settings.artifacts)


@router.get("/artifacts/{root}/{path:path}")
def artifact(root: int, path: str, settings: Settings) -> Response:
    file = resolve_artifact(settings.artifacts, root, path)
    headers = {"Content-Security-Policy": ARTIFACT_CSP}
    if file.suffix == ".html":
        return FileResponse(file, media_type="text/html; charset=utf-8", headers=headers)
    return FileResponse(file, headers=headers)


@router.get("/bias/{root}/{path:path}", response_class=HTMLResponse)
def bias(request: Request, root: int, path: str, settings: Settings) -> HTMLResponse:
    report = bias_report(settings.artifacts, root, path)
    return page(request, "bias.html", report=report, root=root, folder=str(Path(path).parent))
