"""The web application behind `prefsmith ui`: server-rendered pages over the database, through `storage`.

Model output is untrusted: every text goes through Jinja2's autoescaping, invisible and bidirectional control
characters are shown as visible marks, long texts are cut (the whole text is one click away, as plain text),
and a Content-Security-Policy allows no inline script, no plugin, no framing. Reviews are POSTs carrying a
CSRF token (double-submit cookie, SameSite=Strict, Origin checked). Off the loopback interface every request
needs the token from $PREFSMITH_UI_TOKEN; with `read_only` nothing can be written.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from sqlalchemy import Engine

from configs.errors import NotFoundError, PrefsmithError
from configs.secrets import masked
from storage.browse import (
    PAIR_STATUSES,
    Cursor,
    PairFilter,
    list_failed_episodes,
    list_pairs,
    older_pair_id,
    pair_detail,
    pair_text,
    prompt_sources,
    run_exports,
    run_prompt_versions,
    run_series,
)
from storage.db import session_scope
from storage.queries import get_run, list_runs, run_summary
from storage.reviews import add_review
from storage.vocabulary import ReviewDecision
from ui.artifacts import bias_report, find_artifacts, resolve_artifact
from ui.security import ARTIFACT_CSP, Guard, form_refusal, remember_token, safe_next, token_matches

HERE = Path(__file__).resolve().parent
TEXT_LIMIT = 20_000  # characters of one text shown on a page; the rest is behind the "whole text" link
PAGE_SIZE = 50


@dataclass
class UiSettings:
    engine: Engine
    read_only: bool = False
    token: str | None = None  # required on every request when set
    artifacts: list[Path] = field(default_factory=list)  # folders searched for mask renders and bias reports
    reviewer: str = "reviewer"  # the name a review form starts with


# Invisible characters that change how text reads (bidi overrides and isolates, zero-width marks) and C0
# controls: shown as visible marks so a pair cannot look different from what it holds.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def inert(value: Any, limit: int | None = TEXT_LIMIT) -> Markup:
    """Any value as escaped text, cut to `limit` characters, control characters made visible."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1, default=str)
    if limit is not None and len(text) > limit:
        text = text[:limit]
    out, last = [], 0
    for m in _CONTROLS.finditer(text):
        out.append(escape(text[last : m.start()]))
        out.append(Markup(f'<span class="ctl" title="invisible control character">⟨U+{ord(m.group()):04X}⟩</span>'))
        last = m.end()
    out.append(escape(text[last:]))
    return Markup("").join(out)


def _points(values: list[float], width: int = 360, height: int = 90) -> str:
    """SVG polyline points of `values` scaled into width × height (numbers only)."""
    if not values:
        return ""
    top = max(max(values), 1e-9)
    step = width / max(len(values) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - (v / top) * (height - 4) - 2:.1f}" for i, v in enumerate(values))


def _diff(old: str | None, new: str) -> list[tuple[str, str]]:
    """(kind, line) of a line diff: kind is 'add', 'del' or 'same'."""
    if old is None:
        return [("add", line) for line in new.splitlines()]
    kinds = {"+ ": "add", "- ": "del", "  ": "same"}
    return [
        (kinds[line[:2]], line[2:]) for line in difflib.ndiff(old.splitlines(), new.splitlines()) if line[:2] in kinds
    ]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"], default=True, default_for_string=True),
    )
    env.filters["inert"] = inert
    env.filters["points"] = _points
    env.filters["diff"] = _diff
    env.filters["fmt"] = lambda v, spec=".2f": "–" if v is None else format(v, spec)
    env.filters["stamp"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M:%S}"
    return env


def create_app(settings: UiSettings) -> FastAPI:
    app = FastAPI(title="prefsmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, token=settings.token)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(env=_environment())

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context |= {"read_only": settings.read_only, "csrf": getattr(request.state, "csrf", "")}
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def problem(request: Request, message: str, status_code: int) -> HTMLResponse:
        return page(request, "error.html", status_code=status_code, message=message)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> HTMLResponse:
        return problem(request, str(exc), 404)

    @app.exception_handler(PrefsmithError)
    async def user_error(request: Request, exc: PrefsmithError) -> HTMLResponse:
        return problem(request, str(exc), 400)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", next=safe_next(next), failed=False)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        given, target = str(form.get("token", "")), safe_next(str(form.get("next", "/")))
        if settings.token is None or not token_matches(given, settings.token):
            return page(request, "login.html", status_code=401, next=target, failed=settings.token is not None)
        response = RedirectResponse(target, status_code=303)
        remember_token(response, given)
        return response

    @app.get("/", response_class=HTMLResponse)
    def runs(request: Request) -> HTMLResponse:
        with session_scope(settings.engine) as session:
            summaries = [s.as_dict() for s in list_runs(session)]
        return page(request, "runs.html", runs=list(reversed(summaries)))

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: str) -> HTMLResponse:
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

    @app.get("/pairs", response_class=HTMLResponse)
    def pairs(request: Request) -> HTMLResponse:
        q = request.query_params
        errors: list[str] = []

        def number(name: str) -> float | None:
            raw = q.get(name, "").strip()
            if not raw:
                return None
            try:
                return float(raw)
            except ValueError:
                errors.append(f"{name.replace('_', ' ')} {raw!r} is not a number")
                return None

        status = q.get("status", "all")
        if status not in PAIR_STATUSES:
            errors.append(f"status {status!r} is not one of {', '.join(PAIR_STATUSES)}")
            status = "all"
        filters = PairFilter(
            run=q.get("run") or None,
            status=status,
            min_score=number("min_score"),
            max_score=number("max_score"),
            text=(q.get("q") or "").strip()[:200] or None,
            source=q.get("source") or None,
        )
        after = None
        if q.get("after"):
            try:
                after = Cursor.decode(q["after"])
            except ValueError as exc:
                errors.append(str(exc))
        with session_scope(settings.engine) as session:
            if status == "failed":
                rows, cursor = list_failed_episodes(session, filters.run, after, PAGE_SIZE)
            else:
                rows, cursor = list_pairs(session, filters, after, PAGE_SIZE)
            sources = prompt_sources(session, filters.run)
        params = {k: v for k, v in q.items() if k != "after" and v}
        next_url = f"/pairs?{urlencode(params | {'after': cursor.encode()})}" if cursor else None
        return page(
            request,
            "pairs.html",
            rows=rows,
            filters=filters,
            statuses=PAIR_STATUSES,
            sources=sources,
            errors=errors,
            next_url=next_url,
            first_url=f"/pairs?{urlencode(params)}" if after else None,
            failed=status == "failed",
        )

    @app.get("/pairs/{pair_id}", response_class=HTMLResponse)
    def pair(request: Request, pair_id: str) -> HTMLResponse:
        with session_scope(settings.engine) as session:
            detail = pair_detail(session, pair_id)
        return page(
            request,
            "pair.html",
            d=detail,
            limit=TEXT_LIMIT,
            decisions=[d.value for d in ReviewDecision],
            reviewer=request.cookies.get("prefsmith_reviewer") or settings.reviewer,
        )

    @app.get("/pairs/{pair_id}/text/{side}", response_class=PlainTextResponse)
    def whole_text(pair_id: str, side: str) -> PlainTextResponse:
        with session_scope(settings.engine) as session:
            text = pair_text(session, pair_id, side)
        return PlainTextResponse(text, headers={"Content-Security-Policy": ARTIFACT_CSP})

    @app.post("/pairs/{pair_id}/review")
    async def review(request: Request, pair_id: str) -> Response:
        if settings.read_only:
            return problem(request, "this UI was started read-only (--read-only): reviews are off", 403)
        form = await request.form()
        refusal = form_refusal(request, str(form.get("csrf", "")))
        if refusal is not None:
            return problem(request, refusal, 403)
        reviewer = str(form.get("reviewer", ""))
        with session_scope(settings.engine) as session:
            add_review(session, pair_id, str(form.get("decision", "")), str(form.get("note", "")), reviewer)
            older = older_pair_id(session, pair_id) if form.get("then") == "next" else None
        target = f"/pairs/{older or pair_id}"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie("prefsmith_reviewer", " ".join(reviewer.split())[:128], httponly=True, samesite="strict")
        return response

    @app.get("/training", response_class=HTMLResponse)
    def training(request: Request) -> HTMLResponse:
        return page(request, "training.html", found=find_artifacts(settings.artifacts), roots=settings.artifacts)

    @app.get("/artifacts/{root}/{path:path}")
    def artifact(root: int, path: str) -> Response:
        file = resolve_artifact(settings.artifacts, root, path)
        headers = {"Content-Security-Policy": ARTIFACT_CSP}
        if file.suffix == ".html":
            return FileResponse(file, media_type="text/html; charset=utf-8", headers=headers)
        return FileResponse(file, headers=headers)

    @app.get("/bias/{root}/{path:path}", response_class=HTMLResponse)
    def bias(request: Request, root: int, path: str) -> HTMLResponse:
        report = bias_report(settings.artifacts, root, path)
        return page(request, "bias.html", report=report, root=root, folder=str(Path(path).parent))

    return app
