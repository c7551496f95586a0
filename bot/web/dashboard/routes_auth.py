"""Log in and log out."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature

from bot.web.dashboard import audit
from bot.web.dashboard.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    AdminPost,
    cookie_options,
    end_sessions,
    new_session_cookie,
    read_session,
    state_of,
    tokens_match,
)
from bot.web.dashboard.auth import authenticate as check_password
from bot.web.dashboard.web import render

router = APIRouter()
LOGIN_FORM_MAX_AGE = 3600


def _safe_next(target: str | None) -> str:
    """Only ever go back to a dashboard page (never an open redirect)."""
    if target and target.startswith("/admin") and not target.startswith("//") and "\\" not in target:
        return target
    return "/admin/"


def _client(request: Request) -> str:
    """The peer's address (a trusted proxy's X-Forwarded-For: bot/web/security.py)."""
    return request.client.host if request.client else "unknown"


def _duration(seconds: int) -> str:
    return f"{seconds} seconds" if seconds < 90 else f"about {round(seconds / 60)} minutes"


def _login_page(request: Request, *, err: str | None = None, status_code: int = 200) -> HTMLResponse:
    state = state_of(request)
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        csrf_token=token,
        next=_safe_next(request.query_params.get("next")),
        err=err,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, state.serializer("login").dumps(token), **cookie_options(request, None)
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    if read_session(request) is not None:
        return RedirectResponse("/admin/", status_code=303)
    return _login_page(request)


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/admin/",
) -> Response:
    state = state_of(request)
    try:
        expected = state.serializer("login").loads(
            request.cookies.get(LOGIN_CSRF_COOKIE, ""), max_age=LOGIN_FORM_MAX_AGE
        )
    except BadSignature:
        expected = ""
    if not tokens_match(str(expected), csrf_token):
        return _login_page(request, err="The login form expired; please try again.", status_code=403)
    username = username.strip()[:64]
    keys = state.limiter.keys(username, _client(request))
    wait = state.limiter.retry_after(*keys)
    if wait:
        return _login_page(
            request, err=f"Too many failed attempts; try again in {_duration(wait)}.", status_code=429
        )
    if not username or not check_password(state.settings, username, password):
        state.limiter.failed(*keys)
        audit.record(state.settings, username or "?", "login.failed", ip=_client(request))
        return _login_page(request, err="Wrong name or password.", status_code=401)
    state.limiter.succeeded(keys[0])
    audit.record(state.settings, username, "login", ip=_client(request))
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE, new_session_cookie(state, username), **cookie_options(request, SESSION_MAX_AGE)
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin")
    return response


@router.post("/logout")
def logout(request: Request, admin: AdminPost) -> Response:
    state = state_of(request)
    end_sessions(state.settings, admin.username)
    audit.record(state.settings, admin.username, "logout", ip=_client(request))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/admin", httponly=True, samesite="lax")
    return response
