"""The bot process's asyncio side: adapters, delivery and the web server in one loop.

Each platform adapter is started when its settings are present (Discord token, Slack
tokens); the web playground always runs, and so does the periodic retention clean-up.
Stopping sets one event; everything winds down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import uvicorn
from fastapi import FastAPI

from bot.chat.delivery import Delivery, Poster
from bot.chat.service import ConversationService
from bot.web.security import UVICORN_OPTIONS
from core import retention
from core.logs import announce
from core.settings import Settings

log = logging.getLogger(__name__)


class Adapter(Protocol):
    """A chat platform: converts its events into service calls and posts for delivery."""

    platform: str

    @property
    def poster(self) -> Poster:
        """Where delivery posts this platform's cards and images (read-only here, so an
        adapter may hold a more specific poster)."""
        ...

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and serve until `stop` is set, then disconnect."""


def build_adapters(settings: Settings, service: ConversationService) -> list[Adapter]:
    adapters: list[Adapter] = []
    if settings.discord_token is not None:
        from bot.platforms.discord.adapter import DiscordAdapter

        adapters.append(DiscordAdapter(settings, service))
    if settings.slack_bot_token is not None:
        from bot.platforms.slack.adapter import SlackAdapter

        adapters.append(SlackAdapter(settings, service))
    return adapters


async def clean_up_periodically(settings: Settings, stop: asyncio.Event) -> None:
    """Enforce the retention settings every RETENTION_INTERVAL seconds (0: never)."""
    interval = settings.retention_interval
    while interval and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
            return
        try:
            await asyncio.to_thread(retention.clean_up, settings)
        except Exception:  # a database blip must not end the loop
            log.exception("retention clean-up failed; trying again next interval")


async def announce_when_listening(server: uvicorn.Server, settings: Settings) -> None:
    """The console's web line, once the socket accepts connections."""
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    base = f"http://{settings.web_host}:{settings.web_port}"
    announce(f"web: playground {base}/ · dashboard {base}/admin")


async def run_bot(settings: Settings, web_app: FastAPI, stop: asyncio.Event | None = None) -> None:
    """Serve `web_app` with uvicorn beside every configured adapter and delivery until stopped."""
    stop = stop or asyncio.Event()
    service = ConversationService(settings)
    adapters = build_adapters(settings, service)
    posters: dict[str, Poster] = {a.platform: a.poster for a in adapters}
    web_poster = getattr(web_app.state, "poster", None)
    if web_poster is not None:
        posters["web"] = web_poster
    delivery = Delivery(settings, posters)
    # log_config=None: uvicorn's lines go through our logging (the log file of `dreambot up`).
    config = uvicorn.Config(
        web_app,
        host=settings.web_host,
        port=settings.web_port,
        log_level="info",
        log_config=None,
        **UVICORN_OPTIONS,  # X-Forwarded-* only from DREAMBOT_TRUSTED_PROXIES (bot/web/security.py)
    )
    server = uvicorn.Server(config)
    tasks = [
        asyncio.create_task(server.serve(), name="web"),
        asyncio.create_task(delivery.run(stop), name="delivery"),
        asyncio.create_task(clean_up_periodically(settings, stop), name="retention"),
    ]
    tasks += [asyncio.create_task(a.run(stop), name=a.platform) for a in adapters]
    tasks.append(asyncio.create_task(announce_when_listening(server, settings), name="web-line"))
    for adapter in adapters:
        log.info("%s adapter started", adapter.platform)

    async def stop_web_when_asked() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_web_when_asked(), name="stop-watcher")
    try:
        # The web server ends on SIGINT/SIGTERM (uvicorn handles them) or when `stop` is
        # set by the caller: then everything else stops too.
        await tasks[0]
    finally:
        watcher.cancel()
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks[1:], return_exceptions=True)
