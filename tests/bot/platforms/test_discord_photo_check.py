"""Scenarios: the photo coach on Discord's /train — the question comes before anything is
queued, "Train anyway" trains on the kept photos, "Cancel" trains nothing.

The real discord.py bot runs against the fake Discord.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.platforms.discord.commands import CANCELLED
from core.db import session_scope
from core.models import Photo, Subject
from core.settings import Settings
from tests.helpers.discord_bot import (
    Bot,
    all_jobs,
    custom_ids,
    discord_settings,
    jpeg,
    running_bot,
    wait_until,
)
from tests.helpers.fake_discord import FakeDiscord

EPHEMERAL = 64


@pytest.fixture
def settings(sqlite_settings: Settings, fake_discord: FakeDiscord) -> Settings:
    return discord_settings(sqlite_settings, fake_discord)


@pytest.fixture
async def bot(settings: Settings, fake_discord: FakeDiscord) -> AsyncIterator[Bot]:
    async with running_bot(settings, fake_discord) as running:
        yield running


def photos_with_problems(fake_discord: FakeDiscord) -> dict[str, Any]:
    """Three good photos, a copy of the first and a nearly black one."""
    colours = [(0, 90, 30), (60, 90, 30), (120, 90, 30), (0, 90, 30), (3, 3, 3)]
    names = ["rex0.jpg", "rex1.jpg", "rex2.jpg", "rex0-again.jpg", "night.jpg"]
    return {
        f"photo{i + 1}": fake_discord.upload(name, jpeg(color=colour), "image/jpeg")
        for i, (name, colour) in enumerate(zip(names, colours, strict=True))
    }


async def the_question(fake_discord: FakeDiscord, interaction: dict[str, Any]) -> dict[str, Any]:
    token = interaction["token"]
    await wait_until(lambda: fake_discord.rest("POST", f"/webhooks/.*/{token}$"), what="the question")
    return next(m for m in fake_discord.messages.values() if m.get("_token") == token)


def stored_photos(settings: Settings) -> list[str]:
    with session_scope(settings) as s:
        return [p.storage_key for p in s.scalars(select(Photo))]


async def test_the_coach_asks_first_and_train_anyway_trains_on_the_kept_photos(
    bot: Bot, fake_discord: FakeDiscord, settings: Settings
) -> None:
    alice = fake_discord.new_user("alice")
    inter = fake_discord.slash(
        "train", {"name": "Rex", "class": "dog", **photos_with_problems(fake_discord)}, alice
    )
    asked = await the_question(fake_discord, inter)
    lines = asked["content"].splitlines()
    assert lines[0] == "1 of 5 photos is too dark; 1 is a copy of another — 4 photos will be used."
    assert any(line.startswith("• rex0-again.jpg: This photo is a copy of photo 1") for line in lines)
    assert any(line.startswith("• night.jpg: This photo is too dark") for line in lines)
    assert lines[-1] == "Train anyway?" and asked["flags"] & EPHEMERAL
    assert all_jobs(settings) == [] and stored_photos(settings) == [], "nothing queued before the answer"
    assert not [c for c in fake_discord.channels.values() if c["type"] == 11], "no thread left behind"

    anyway, cancel = custom_ids(asked)
    assert anyway.startswith("photos:train:") and cancel.startswith("photos:cancel:")
    pressed = fake_discord.press(asked, anyway, alice)
    (job,) = await wait_until(lambda: all_jobs(settings), what="the training job")
    assert job.kind == "train" and job.status == "queued"
    started = await wait_until(
        lambda: [m for m in fake_discord.messages.values() if "training has started" in m["content"]],
        what="the answer",
    )
    assert "Got 5 photos of Rex (training on 4: 1 was a copy)" in started[0]["content"]
    with session_scope(settings) as s:
        (subject,) = s.scalars(select(Subject))
        assert subject.id == job.subject_id and len(subject.photos) == 4  # the copy is not stored
    assert pressed["id"] != inter["id"]


async def test_cancel_trains_nothing(bot: Bot, fake_discord: FakeDiscord, settings: Settings) -> None:
    alice = fake_discord.new_user("alice")
    inter = fake_discord.slash(
        "train", {"name": "Rex", "class": "dog", **photos_with_problems(fake_discord)}, alice
    )
    asked = await the_question(fake_discord, inter)
    _, cancel = custom_ids(asked)
    fake_discord.press(asked, cancel, alice)
    await wait_until(lambda: fake_discord.messages[asked["id"]]["content"] == CANCELLED, what="the cancel")
    assert fake_discord.messages[asked["id"]]["components"] == []
    assert all_jobs(settings) == [] and stored_photos(settings) == []


async def test_someone_else_cannot_answer_the_question(
    bot: Bot, fake_discord: FakeDiscord, settings: Settings
) -> None:
    alice, bob = fake_discord.new_user("alice"), fake_discord.new_user("bob")
    inter = fake_discord.slash(
        "train", {"name": "Rex", "class": "dog", **photos_with_problems(fake_discord)}, alice
    )
    asked = await the_question(fake_discord, inter)
    anyway, cancel = custom_ids(asked)
    fake_discord.press(asked, anyway, bob)  # ignored: only the uploader decides
    fake_discord.press(asked, cancel, alice)  # handled after bob's press
    await wait_until(lambda: fake_discord.messages[asked["id"]]["content"] == CANCELLED, what="the cancel")
    assert all_jobs(settings) == []
