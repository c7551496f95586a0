"""One set of security headers for every response of the web app, and who may say where a
request came from.

- Every HTTP response — pages, `/admin/api/*`, JSON, images, CSV, redirects, error pages
  (404, 405, 500) and static files — carries the same Content-Security-Policy (scripts
  and styles from this origin only, nothing inline, no framing), `nosniff`, frame denial
  and a same-origin referrer policy. Everything but static files is `no-store` unless the
  route chose its own caching (the playground's generated images).
- `X-Forwarded-For` / `X-Forwarded-Proto` are believed only from the addresses in
  DREAMBOT_TRUSTED_PROXIES (default: none). uvicorn's own handling, which trusts loopback,
  is switched off (`UVICORN_OPTIONS`): otherwise any local process could pick the client
  address the login limit counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.datastructures import MutableHeaders
from starlette.responses import PlainTextResponse

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from core.settings import Settings

# No inline script runs anywhere (the SQL chart's data travels in a non-executed
# <script type="application/json">); chosen photos preview as blob: URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
NO_STORE = "no-store"
STATIC_PREFIXES = ("/static/", "/admin/static/")
# For uvicorn.run / uvicorn.Config: forwarded headers are the app's business (above).
UVICORN_OPTIONS: dict[str, Any] = {"proxy_headers": False, "server_header": False}


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response that passes through it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith(STATIC_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                add_security_headers(headers, static=static)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_security_headers(headers: MutableHeaders, *, static: bool = False) -> None:
    for name, value in SECURITY_HEADERS.items():
        headers[name] = value
    if not static and "cache-control" not in headers:
        headers["Cache-Control"] = NO_STORE


async def _server_error(_request: Request, _exc: Exception) -> PlainTextResponse:
    # Starlette answers a crash outside every user middleware, so this page sets its own.
    response = PlainTextResponse("Internal Server Error", status_code=500)
    add_security_headers(response.headers)
    return response


def trusted_proxies(settings: Settings) -> list[str]:
    return [item.strip() for item in settings.trusted_proxies.split(",") if item.strip()]


def install_security(app: FastAPI, settings: Settings) -> None:
    """Headers on every response; forwarded headers only from DREAMBOT_TRUSTED_PROXIES."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    proxies = trusted_proxies(settings)
    if proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(Exception, _server_error)
