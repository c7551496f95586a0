"""Rendering helpers shared by the dashboard's pages: templates, headers, redirects, paging."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from bot.web.dashboard.auth import AdminSession
from core.errors import NotFound

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))  # autoescapes HTML


def _when(value: datetime | None) -> str:
    return value.isoformat(sep=" ", timespec="seconds") if value else "—"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


TEMPLATES.env.filters["when"] = _when
TEMPLATES.env.filters["pretty"] = _pretty


def render(
    request: Request, template: str, admin: AdminSession | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context.update(
        admin=admin,
        csrf_token=admin.csrf_token if admin else context.get("csrf_token", ""),
        msg=request.query_params.get("msg"),
        err=context.get("err") or request.query_params.get("err"),
    )
    # Security headers (CSP, no-store, …): bot/web/security.py adds them to every response.
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)


def back(path: str, *, msg: str | None = None, err: str | None = None) -> RedirectResponse:
    """Post/redirect/get: back to `path` with a one-line message."""
    query = urlencode({k: v for k, v in (("msg", msg), ("err", err)) if v})
    return RedirectResponse(f"{path}?{query}" if query else path, status_code=303)


@dataclass(frozen=True)
class Page:
    number: int
    size: int
    total: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    def link(self, request: Request, number: int) -> str:
        params = dict(request.query_params)
        params.pop("msg", None)
        params.pop("err", None)
        params["page"] = str(number)
        return f"{request.url.path}?{urlencode(params)}"


def page_of(request: Request, total: int, size: int = 50) -> Page:
    try:
        number = int(request.query_params.get("page", "1"))
    except ValueError:
        number = 1
    pages = max(1, math.ceil(total / size))
    return Page(number=min(max(1, number), pages), size=size, total=total)


@contextmanager
def or_404() -> Iterator[None]:
    """An action's `NotFound` (no such person, subject, job…) as the page's 404."""
    try:
        yield
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
