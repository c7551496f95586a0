"""The bot runtime stops when asked, not only on a signal (tests and embedders need that)."""

from __future__ import annotations

import asyncio
import socket

import httpx

from bot.process.runtime import run_bot
from bot.web.app import create_app
from core.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_run_bot_serves_then_stops_on_the_event(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(update={"web_port": free_port()})
    stop = asyncio.Event()
    task = asyncio.create_task(run_bot(settings, create_app(settings), stop))
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            try:
                health = (await client.get(f"http://127.0.0.1:{settings.web_port}/healthz")).json()
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the web server never answered")
    # No worker runs in this test: the health page says so instead of "ok".
    assert health["status"] == "degraded"
    assert [m["queues"] for m in health["missing"]] == [["train"], ["sample"]]
    stop.set()
    await asyncio.wait_for(task, 20)
