"""The web UI's security rules in one place: who may serve it where (the operator's token, needed off loopback),
who may reach it (the token on every request), what may write (CSRF and origin), and what every reply carries.

The token comes from $PREFSMITH_UI_TOKEN, never a flag (flags show in `ps`); once set it is required on loopback
too. Reviews are POSTs carrying a CSRF token (double-submit cookie, SameSite=Strict) from this UI's own origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from configs.errors import PrefsmithError

UI_TOKEN_ENV = "PREFSMITH_UI_TOKEN"
UI_TOKEN_MIN_CHARS = 16
CSRF_COOKIE = "prefsmith_csrf"
TOKEN_COOKIE = "prefsmith_token"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Artifacts of our own renderers (SparsePO masks) carry inline styles; they get a policy of their own, sandboxed.
ARTIFACT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; sandbox"


def is_loopback(host: str) -> bool:
    """Whether `host` is an interface only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serving_token(host: str, environ: Mapping[str, str]) -> str | None:
    """The token a UI listening on `host` requires, from $PREFSMITH_UI_TOKEN in `environ` (None: no token).
    A host other machines reach needs one; a token, where set, must be long enough not to be guessed."""
    token = environ.get(UI_TOKEN_ENV) or None
    if not is_loopback(host) and token is None:
        raise PrefsmithError(f"--host {host} is reachable from other machines: set {UI_TOKEN_ENV} to a secret first")
    if token is not None and len(token) < UI_TOKEN_MIN_CHARS:
        raise PrefsmithError(f"{UI_TOKEN_ENV} is shorter than {UI_TOKEN_MIN_CHARS} characters")
    return token


def token_matches(given: str, token: str) -> bool:
    """Whether `given` is the operator's token, compared in constant time."""
    return hmac.compare_digest(given.encode(), token.encode())


def remember_token(response: Response, token: str) -> None:
    """Keep a signed-in browser's token in a cookie scripts cannot read and other sites never send."""
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this UI, never another site (`//host/…` is one)."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # non-browser clients send neither; the CSRF token still has to match
    return urlsplit(origin).netloc == request.headers.get("host", "")


def form_refusal(request: Request, submitted_csrf: str) -> str | None:
    """Why a form that writes (a review) is refused, or None: its CSRF token must match the browser's cookie,
    and it must come from this UI's own pages."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(submitted_csrf.encode(), cookie.encode()):
        return "the form's CSRF token does not match: reload the page and try again"
    if not _same_origin(request):
        return "a review must come from this UI's own pages"
    return None


class Guard(BaseHTTPMiddleware):
    """Token check (when one is configured), a CSRF cookie for every browser, security headers on every reply."""

    def __init__(self, app: Any, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.cookies.get(TOKEN_COOKIE, "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return token_matches(given, self.token)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        response: Response
        if not (path.startswith("/static/") or path == "/login" or self._authorised(request)):
            if request.method == "GET":
                response = RedirectResponse(f"/login?{urlencode({'next': str(request.url.path)})}", status_code=303)
            else:
                response = PlainTextResponse("a token is needed (see `prefsmith ui --help`)", status_code=401)
        else:
            csrf = request.cookies.get(CSRF_COOKIE)
            request.state.csrf = csrf or secrets.token_urlsafe(24)
            response = await call_next(request)
            if not csrf:
                response.set_cookie(CSRF_COOKIE, request.state.csrf, httponly=True, samesite="strict")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" would make forms send Origin: null
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        response.headers["Cache-Control"] = "no-store"
        return response
