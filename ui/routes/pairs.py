"""The pairs pages: the list filtered and paged by keyset (or the failed episodes), one pair with everything
that made it, one of its texts whole as plain text, and the review form's POST.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.datastructures import QueryParams

from storage.browse import (
    PAIR_STATUSES,
    Cursor,
    PairFilter,
    instruction_types,
    list_failed_episodes,
    list_pairs,
    older_pair_id,
    pair_detail,
    pair_text,
    prompt_sources,
)
from storage.db import session_scope
from storage.reviews import add_review
from storage.vocabulary import ReviewDecision
from ui.pages import TEXT_LIMIT, page, problem
from ui.security import ARTIFACT_CSP, form_refusal
from ui.settings import Settings

PAGE_SIZE = 50
INSTRUCTION_ID = re.compile(r"[\w-]+:[\w-]+")  # IFEval's and IFBench's ids: group:name
REVIEWER_COOKIE = "prefsmith_reviewer"  # the name the last review was signed with, for the next form

router = APIRouter()


@dataclass
class PairQuery:
    """What the list's query string asks for; a bad field is named in `errors` and left out of the filter."""

    filters: PairFilter
    after: Cursor | None = None
    errors: list[str] = field(default_factory=list)


def parse_query(q: QueryParams) -> PairQuery:
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

    instruction = (q.get("instruction") or "").strip() or None
    if instruction is not None and not INSTRUCTION_ID.fullmatch(instruction):
        errors.append(f"instruction {instruction[:80]!r} is not an instruction id (such as punctuation:no_comma)")
        instruction = None
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
        instruction=instruction,
    )
    after = None
    if q.get("after"):
        try:
            after = Cursor.decode(q["after"])
        except ValueError as exc:
            errors.append(str(exc))
    return PairQuery(filters, after, errors)


@router.get("/pairs", response_class=HTMLResponse)
def pairs(request: Request, settings: Settings) -> HTMLResponse:
    query = parse_query(request.query_params)
    filters, failed = query.filters, query.filters.status == "failed"
    with session_scope(settings.engine) as session:
        if failed:
            rows, cursor = list_failed_episodes(session, filters.run, query.after, PAGE_SIZE)
        else:
            rows, cursor = list_pairs(session, filters, query.after, PAGE_SIZE)
        sources = prompt_sources(session, filters.run)
        instructions = instruction_types(session, filters.run)
    params = {k: v for k, v in request.query_params.items() if k != "after" and v}
    return page(
        request,
        "pairs.html",
        rows=rows,
        filters=filters,
        statuses=PAIR_STATUSES,
        sources=sources,
        instructions=instructions,
        errors=query.errors,
        next_url=f"/pairs?{urlencode(params | {'after': cursor.encode()})}" if cursor else None,
        first_url=f"/pairs?{urlencode(params)}" if query.after else None,
        failed=failed,
    )


@router.get("/pairs/{pair_id}", response_class=HTMLResponse)
def pair(request: Request, pair_id: str, settings: Settings) -> HTMLResponse:
    with session_scope(settings.engine) as session:
        detail = pair_detail(session, pair_id)
    return page(
        request,
        "pair.html",
        d=detail,
        limit=TEXT_LIMIT,
        decisions=[d.value for d in ReviewDecision],
        reviewer=request.cookies.get(REVIEWER_COOKIE) or settings.reviewer,
    )


@router.get("/pairs/{pair_id}/text/{side}", response_class=PlainTextResponse)
def whole_text(pair_id: str, side: str, settings: Settings) -> PlainTextResponse:
    with session_scope(settings.engine) as session:
        text = pair_text(session, pair_id, side)
    return PlainTextResponse(text, headers={"Content-Security-Policy": ARTIFACT_CSP})


@router.post("/pairs/{pair_id}/review")
async def review(request: Request, pair_id: str, settings: Settings) -> Response:
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
    response = RedirectResponse(f"/pairs/{older or pair_id}", status_code=303)
    response.set_cookie(REVIEWER_COOKIE, " ".join(reviewer.split())[:128], httponly=True, samesite="strict")
    return response
