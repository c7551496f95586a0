"""Running the real Discord adapter (and delivery) in the test's event loop against FakeDiscord."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import SecretStr

from bot.delivery import Delivery
from bot.platforms.discord import DiscordAdapter
from bot.service import ConversationService
from core.settings import Settings
from tests.helpers.fake_discord import TOKEN, FakeDiscord


async def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (ordering, not timing, is asserted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def discord_settings(settings: Settings, fake: FakeDiscord, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(discord_token=SecretStr(TOKEN), discord_api_base=fake.api_base)
    values.update(overrides)
    return settings.model_copy(update=values)


@dataclass
class Bot:
    adapter: DiscordAdapter
    delivery: Delivery
    settings: Settings


@asynccontextmanager
async def running_bot(settings: Settings, fake: FakeDiscord, *, delivery: bool = True) -> AsyncIterator[Bot]:
    """The adapter connected to `fake` (commands synced, guild cached) and delivery running."""
    adapter = DiscordAdapter(settings, ConversationService(settings))
    deliver = Delivery(settings, {"discord": adapter.poster})
    stop = asyncio.Event()
    tasks = [asyncio.create_task(adapter.run(stop))]
    if delivery:
        tasks.append(asyncio.create_task(deliver.run(stop, interval=0.05)))
    try:
        await wait_until(
            lambda: adapter.client.get_guild(fake.guild_id) is not None or tasks[0].done(),
            what="the bot to connect",
        )
        if tasks[0].done():
            tasks[0].result()  # raises what stopped it
        yield Bot(adapter, deliver, settings)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)


def jpeg(width: int = 640, height: int = 512, color: tuple[int, int, int] = (180, 120, 60)) -> bytes:
    """A valid photo with some texture (a flat colour compresses to nothing)."""
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 16):
        for y in range(0, height, 16):
            image.putpixel((x, y), ((x * 7) % 256, (y * 5) % 256, (x + y) % 256))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    image = Image.effect_noise((width, height), 60 + seed).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
