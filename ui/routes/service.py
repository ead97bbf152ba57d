"""Endpoints for machines rather than people: the health check and the favicon a browser asks for.

Like every page they need the token when one is set (`ui.security.Guard`).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

router = APIRouter()


@router.get("/favicon.ico")
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/healthz", response_class=PlainTextResponse)
def healthz() -> str:
    return "ok"
