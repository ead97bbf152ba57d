"""How the UI's pages are rendered: Jinja2 templates with autoescaping, and filters that keep model output inert.

Model output is untrusted: every text is escaped, invisible and bidirectional control characters are shown as
visible marks, and long texts are cut (the whole text is one click away, as plain text).
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from ui.settings import UiSettings

HERE = Path(__file__).resolve().parent
TEXT_LIMIT = 20_000  # characters of one text shown on a page; the rest is behind the "whole text" link

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



templates = Jinja2Templates(env=_environment())


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Template `name` rendered for `request`, with what every page shows: read-only mode, the CSRF token."""
    settings: UiSettings = request.app.state.settings
    context |= {"read_only": settings.read_only, "csrf": getattr(request.state, "csrf", "")}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def problem(request: Request, message: str, status_code: int) -> HTMLResponse:
    """The error page, naming what is wrong."""
    return page(request, "error.html", status_code=status_code, message=message)
