"""Running the real Discord adapter (and delivery) in the test's event loop against FakeDiscord,
and the steps scenarios share: /train Rex, play the worker that finishes a job, read what
the fake received."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import SecretStr
from sqlalchemy import select, update

from bot.chat.delivery import Delivery
from bot.chat.service import ConversationService
from bot.platforms.discord.adapter import DiscordAdapter
from core import jobs
from core.db import session_scope
from core.job_results import SampleResult
from core.models import Job, Subject
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.fake_discord import TOKEN, FakeDiscord
from tests.helpers.fake_discord_records import Dispatched, Recorded


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


# -- scenario steps ----------------------------------------------------------------------


def all_jobs(settings: Settings) -> list[Job]:
    with session_scope(settings) as s:
        rows = list(s.scalars(select(Job).order_by(Job.id)))
        s.expunge_all()
        return rows


def after(fake: FakeDiscord, event: Dispatched) -> list[Recorded]:
    return [r for r in fake.rest() if r.seq > event.seq]


def bot_messages(fake: FakeDiscord, channel_id: str) -> list[dict[str, Any]]:
    return [m for m in fake.channel_messages(channel_id) if m["author"]["id"] == fake.bot["id"]]


def custom_ids(message: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


async def train_rex(fake: FakeDiscord, alice: dict[str, Any], n_photos: int = 5) -> dict[str, Any]:
    """/train Rex (dog) with `n_photos` photos; returns the interaction once it is answered."""
    photos = {
        f"photo{i + 1}": fake.upload(f"rex{i}.jpg", jpeg(color=(40 * i, 90, 30)), "image/jpeg")
        for i in range(n_photos)
    }
    inter = fake.slash("train", {"name": "Rex", "class": "dog", **photos}, alice)
    token = inter["token"]
    await wait_until(
        lambda: (
            fake.rest("PATCH", f"/webhooks/.*/{token}/messages/@original")
            or fake.rest("POST", f"/webhooks/.*/{token}$")
        ),
        what="the /train answer",
    )
    return inter


def the_thread(fake: FakeDiscord) -> str:
    created = fake.rest("POST", rf"^/channels/{fake.channel_id}/threads$")
    assert len(created) == 1
    return next(c["id"] for c in fake.channels.values() if c["type"] == 11 and c["name"].endswith("Rex"))


async def finish_training(settings: Settings, job_id: int) -> int:
    """What the training worker does at the end: the subject gets its LoRA and is ready."""
    lease = jobs.claim(settings, job_id, "test-worker")
    assert lease is not None
    jobs.finish(settings, lease)
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.subject_id is not None
        s.execute(
            update(Subject)
            .where(Subject.id == job.subject_id)
            .values(
                status="ready",
                artifact_key=f"subjects/{job.subject_id}/lora.safetensors",
                artifact_sha256="0" * 64,
            )
        )
        return job.subject_id


def finish_sample(settings: Settings, job_id: int, n: int) -> list[int]:
    lease = jobs.claim(settings, job_id, "test-worker")
    assert lease is not None
    storage = storage_from_settings(settings)
    ids = []
    for i in range(n):
        key = f"jobs/{job_id}/{i}.png"
        storage.put(key, png(seed=i))
        ids.append(
            jobs.add_image(
                settings, lease, storage_key=key, seed=i, prompt="zwx dog on the moon", width=64, height=64
            )
        )
    jobs.finish(settings, lease, SampleResult(image_ids=ids))
    return ids
