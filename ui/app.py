"""The web application behind `prefsmith ui`: server-rendered pages over the database, through `storage`.

`create_app` assembles it: the settings on `app.state`, the `Guard` of `ui.security` in front of every request
(the token, the CSRF cookie, a Content-Security-Policy allowing no inline script, no plugin, no framing), the
static files, one error page for errors a user can cause, and the page families of `ui.routes`. Model output is
rendered inert by `ui.pages`; with `read_only` nothing can be written.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from configs.errors import NotFoundError, PrefsmithError
from ui.pages import HERE, problem
from ui.routes import login, pairs, runs, service, training
from ui.security import Guard
from ui.settings import UiSettings


async def user_error(request: Request, exc: Exception) -> HTMLResponse:
    """An error a user can cause (a missing run, a bad review) as a page naming it: 404 or 400."""
    return problem(request, str(exc), 404 if isinstance(exc, NotFoundError) else 400)


def create_app(settings: UiSettings) -> FastAPI:
    app = FastAPI(title="prefsmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.add_middleware(Guard, token=settings.token)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(PrefsmithError, user_error)
    for family in (service, login, runs, pairs, training):
        app.include_router(family.router)
    return app
