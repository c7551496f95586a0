"""Pointing the real discord.py client at another REST base and gateway, per client.

discord.py builds every REST URL as `Route.BASE + path`, where `Route.BASE` is a class
attribute (the library itself reassigns it to switch API versions), and connects the
gateway to `DiscordWebSocket.DEFAULT_GATEWAY`. Setting those globals would redirect every
client in the process. Instead each client gets a `RoutedHTTPClient`, which rewrites the
URL of each request at the two places where discord.py sends it:

* `HTTPClient.request` (all bot REST calls) and `HTTPClient.ws_connect` (the gateway);
* the webhook adapter that interaction callbacks and follow-ups use. discord.py picks it
  from the `async_context` context variable (its designed seam for swapping adapters), so
  `routed_webhooks()` sets a rewriting adapter for the current task and the tasks it starts.

Nothing else is patched, and a client with the default settings behaves exactly as stock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

DEFAULT_API_BASE = Route.BASE


def _rebase(url: str, api_base: str) -> str:
    if api_base != DEFAULT_API_BASE and url.startswith(DEFAULT_API_BASE):
        return api_base + url[len(DEFAULT_API_BASE) :]
    return url


class RoutedHTTPClient(HTTPClient):
    """discord.py's HTTP client with its own REST base and gateway URL."""

    def __init__(self, *args: Any, api_base: str, gateway_url: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.api_base = api_base.rstrip("/")
        self.gateway_url = gateway_url  # None: asked from GET /gateway/bot after login

    async def request(self, route: Route, **kwargs: Any) -> Any:
        route.url = _rebase(route.url, self.api_base)
        return await super().request(route, **kwargs)

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        # discord.py connects to DEFAULT_GATEWAY (plus ?v=&encoding=) for a new session and
        # to READY's resume_gateway_url when resuming; only the former is ours to replace.
        default = str(DiscordWebSocket.DEFAULT_GATEWAY).rstrip("/")
        if self.gateway_url and url.startswith(default):
            query = yarl.URL(url).query
            url = str(yarl.URL(self.gateway_url).update_query(query))
        return await super().ws_connect(url, compress=compress)

    async def resolve_gateway(self) -> None:
        """Ask the API where its gateway is, as Discord asks clients to (GET /gateway/bot)."""
        if self.gateway_url is None and self.api_base != DEFAULT_API_BASE:
            _, url, _ = await self.get_bot_gateway()
            self.gateway_url = url


class RoutedWebhookAdapter(AsyncWebhookAdapter):
    """The interaction/webhook adapter with the client's REST base."""

    def __init__(self, api_base: str) -> None:
        super().__init__()
        self.api_base = api_base.rstrip("/")

    async def request(self, route: Route, *args: Any, **kwargs: Any) -> Any:
        route.url = _rebase(route.url, self.api_base)
        return await super().request(route, *args, **kwargs)


def install(client: discord.Client, api_base: str, gateway_url: str | None) -> RoutedHTTPClient:
    """Give `client` (just constructed, not logged in) a routed HTTP client."""
    old = client.http
    http = RoutedHTTPClient(
        old.loop,
        old.connector if old.connector is not discord.utils.MISSING else None,
        proxy=old.proxy,
        proxy_auth=old.proxy_auth,
        unsync_clock=not old.use_clock,
        http_trace=old.http_trace,
        max_ratelimit_timeout=old.max_ratelimit_timeout,
        api_base=api_base,
        gateway_url=gateway_url,
    )
    # The client and its connection state are the only holders at this point; a
    # CommandTree must be created afterwards (it keeps a reference too).
    client.http = http
    client._connection.http = http
    return http


@contextlib.contextmanager
def routed_webhooks(api_base: str) -> Iterator[None]:
    """Route interaction callbacks and webhook follow-ups made in this context."""
    if api_base.rstrip("/") == DEFAULT_API_BASE:
        yield
        return
    token = async_context.set(RoutedWebhookAdapter(api_base))
    try:
        yield
    finally:
        async_context.reset(token)
