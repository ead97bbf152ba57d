"""Signing in with the operator's token: the form, and the POST that keeps the token in a cookie.

What counts as the token and where a sign-in may lead afterwards are rules of `ui.security`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ui.pages import page
from ui.security import remember_token, safe_next, token_matches
from ui.settings import Settings

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return page(request, "login.html", next=safe_next(next), failed=False)


@router.post("/login")
async def login(request: Request, settings: Settings) -> Response:
    form = await request.form()
    given, target = str(form.get("token", "")), safe_next(str(form.get("next", "/")))
    if settings.token is None or not token_matches(given, settings.token):
        return page(request, "login.html", status_code=401, next=target, failed=settings.token is not None)
    response = RedirectResponse(target, status_code=303)
    remember_token(response, given)
    return response
