"""Pointing discord.py at another Discord (a REST proxy, or a local fake in tests).

discord.py builds every REST URL as `Route.BASE + path` (the bot's own calls and the
webhook adapter that interaction callbacks and follow-ups use alike), and a `Client`
opens its gateway at `DiscordWebSocket.DEFAULT_GATEWAY` (it never asks GET /gateway/bot).
Those two class attributes are the library's module-level settings (it reassigns
`Route.BASE` itself to switch API versions), so they are the whole seam: `pointed_at()`
sets them while the adapter runs and puts them back afterwards.

They are process-wide: every discord.py client in the process follows them, so one process
talks to one Discord. With the default API base and no gateway URL nothing is touched and
discord.py runs exactly as shipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiohttp
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

STOCK_API_BASE = Route.BASE  # what discord.py ships with, read before anything moves it


class Endpoints:
    """Where the adapter's Discord lives; `gateway_url` None: asked from the API when needed."""

    def __init__(self, api_base: str, gateway_url: str | None) -> None:
        self.api_base = api_base.rstrip("/")
        self.gateway_url = gateway_url

    @property
    def moved(self) -> bool:
        """Whether REST calls go somewhere other than discord.py's own base."""
        return self.api_base != STOCK_API_BASE

    async def find_gateway(self, token: str) -> None:
        """On a moved API without a named gateway, ask it (GET /gateway/bot, as Discord asks
        bots to) and point discord.py there. Call inside `pointed_at()`, after login."""
        if self.gateway_url is not None or not self.moved:
            return
        headers = {"Authorization": f"Bot {token}"}
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(f"{self.api_base}/gateway/bot", headers=headers) as response,
        ):
            response.raise_for_status()
            self.gateway_url = str((await response.json())["url"])
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)


@contextlib.contextmanager
def pointed_at(where: Endpoints) -> Iterator[None]:
    """Point discord.py's REST base (and gateway, when named) at `where` for this block, for
    the whole process; restored on exit. Refuses a second, different Discord in one process."""
    saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    if not where.moved and where.gateway_url is None:
        yield  # the default: discord.py untouched
        return
    if saved[0] not in (STOCK_API_BASE, where.api_base):
        raise RuntimeError(f"discord.py already points at {saved[0]}; one Discord per process")
    Route.BASE = where.api_base
    if where.gateway_url is not None:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(where.gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved
