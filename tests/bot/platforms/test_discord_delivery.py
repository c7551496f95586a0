"""Delivery through the Discord poster: restart recovery, interaction follow-ups, upload limits."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update

from bot.chat.delivery import OutMessage, Target
from core import jobs
from core.db import session_scope
from core.models import Conversation, Job, OutboxItem, User
from core.settings import Settings
from tests.bot.platforms.test_discord import bot_messages, custom_ids, finish_sample
from tests.helpers.discord_bot import discord_settings, running_bot, wait_until
from tests.helpers.fake_discord import FakeDiscord


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
def settings(sqlite_settings: Settings, fake: FakeDiscord) -> Settings:
    return discord_settings(sqlite_settings, fake)


@pytest.fixture
def both_db_settings(db_settings: Settings, fake: FakeDiscord) -> Settings:
    """SQLite and PostgreSQL: the outbox's exactly-once rests on the database."""
    return discord_settings(db_settings, fake)


def sample_job(
    settings: Settings, channel_id: str, thread_id: str, n: int = 2, token: str | None = None
) -> int:
    """A finished sample job in a Discord conversation (as if asked for earlier)."""
    with session_scope(settings) as s:
        user = User(platform="discord", platform_user_id="42", display_name="alice")
        s.add(user)
        s.flush()
        conv = Conversation(
            platform="discord",
            channel_id=channel_id,
            thread_id=thread_id,
            user_id=user.id,
            interaction_token=token,
        )
        s.add(conv)
        s.flush()
        user_id, conv_id = user.id, conv.id
    job = jobs.submit(
        settings,
        kind="sample",
        params={"prompt": "zwx dog on the moon", "n": n},
        owner_id=user_id,
        conversation_id=conv_id,
    )
    finish_sample(settings, job.id, n)
    return job.id


def outbox(settings: Settings, job_id: int, kind: str) -> OutboxItem | None:
    with session_scope(settings) as s:
        row = s.scalar(select(OutboxItem).where(OutboxItem.job_id == job_id, OutboxItem.kind == kind))
        if row is not None:
            s.expunge(row)
        return row


async def restart_after_lost_commit(
    settings: Settings, fake: FakeDiscord, row_id: int, job_id: int
) -> OutboxItem:
    """The images row as if the bot died after posting, before "posted" was committed; then a
    restarted bot's delivery, until the row is posted again. Returns the row."""
    with session_scope(settings) as s:
        s.execute(
            update(OutboxItem)
            .where(OutboxItem.id == row_id)
            .values(state="posting", platform_message_id=None)
        )
    async with running_bot(settings, fake):
        await wait_until(
            lambda: (r := outbox(settings, job_id, "images")) and r.state == "posted", what="find"
        )
    row = outbox(settings, job_id, "images")
    assert row is not None
    return row


def images_posts(fake: FakeDiscord, channel_id: str) -> list[Any]:
    return [
        r
        for r in fake.rest("POST", rf"^/channels/{channel_id}/messages$")
        if r.files and any(f.filename.endswith(".png") for f in r.files)
    ]


async def test_restart_after_posting_started_finds_the_message_instead_of_posting_again(
    fake: FakeDiscord, both_db_settings: Settings
) -> None:
    settings = both_db_settings
    thread = fake.add_thread(fake.channel_id, "Rex")["id"]
    job_id = sample_job(settings, fake.channel_id, thread)
    async with running_bot(settings, fake):
        await wait_until(
            lambda: (r := outbox(settings, job_id, "images")) and r.state == "posted", what="post"
        )
    first = outbox(settings, job_id, "images")
    assert first is not None and len(images_posts(fake, thread)) == 1
    # The crash: the message reached Discord, but "posted" never reached the database.
    again = await restart_after_lost_commit(settings, fake, first.id, job_id)
    assert again.platform_message_id == first.platform_message_id
    assert len(images_posts(fake, thread)) == 1, "not posted twice"
    looked = fake.rest("GET", rf"^/channels/{thread}/messages$")
    assert looked and looked[-1].query.get("limit") == "50"


async def test_restart_before_the_post_reached_discord_posts_exactly_once(
    fake: FakeDiscord, both_db_settings: Settings
) -> None:
    settings = both_db_settings
    thread = fake.add_thread(fake.channel_id, "Rex")["id"]
    job_id = sample_job(settings, fake.channel_id, thread)
    async with running_bot(settings, fake):
        await wait_until(
            lambda: (r := outbox(settings, job_id, "images")) and r.state == "posted", what="post"
        )
    assert len(images_posts(fake, thread)) == 1
    # Crashed after marking "posting", before the POST reached Discord: no such message there.
    for msg in bot_messages(fake, thread):
        if msg["attachments"]:
            fake.messages.pop(msg["id"])
    with session_scope(settings) as s:
        s.execute(
            update(OutboxItem)
            .where(OutboxItem.job_id == job_id, OutboxItem.kind == "images")
            .values(state="posting", platform_message_id=None)
        )
    async with running_bot(settings, fake):
        await wait_until(
            lambda: (r := outbox(settings, job_id, "images")) and r.state == "posted", what="repost"
        )
    assert len(images_posts(fake, thread)) == 2  # the lost one, posted once more
    assert len([m for m in bot_messages(fake, thread) if m["attachments"]]) == 1


def _jobs(settings: Settings) -> list[Job]:
    with session_scope(settings) as s:
        rows = list(s.scalars(select(Job)))
        s.expunge_all()
        return rows


async def test_imagine_card_goes_through_the_token_then_the_channel(
    fake: FakeDiscord, settings: Settings
) -> None:
    alice = fake.new_user("alice")
    async with running_bot(settings, fake):
        inter = fake.slash("imagine", {"prompt": "a dog on the moon", "n": 1}, alice)
        await wait_until(lambda: fake.rest("PATCH", f"/{inter['token']}/messages/@original"), what="answer")
        (job,) = _jobs(settings)
        card = await wait_until(
            lambda: fake.rest("POST", f"^/webhooks/{fake.app_id}/{inter['token']}$"),
            what="the card as a follow-up",
        )
        assert "a dog on the moon" in card[0].json["content"]
        fake.expired_tokens.add(inter["token"])  # 15 minutes later, as far as Discord is concerned
        finish_sample(settings, job.id, 1)
        await wait_until(
            lambda: (r := outbox(settings, job.id, "images")) and r.state == "posted", what="post"
        )
        await wait_until(
            lambda: (outbox(settings, job.id, "job_card") or OutboxItem()).payload.get("final"),
            what="the final card edit",
        )
    assert images_posts(fake, fake.channel_id), "after the token, an ordinary channel message"
    edits = fake.rest("PATCH", rf"^/channels/{fake.channel_id}/messages/")
    assert edits and "done" in edits[-1].json["content"]


async def test_restart_finds_an_images_follow_up_by_its_files(fake: FakeDiscord, settings: Settings) -> None:
    """A follow-up through the interaction webhook carries no nonce: it is found by its files."""
    alice = fake.new_user("alice")
    async with running_bot(settings, fake):
        inter = fake.slash("imagine", {"prompt": "a dog on the moon", "n": 2}, alice)
        await wait_until(lambda: fake.rest("PATCH", f"/{inter['token']}/messages/@original"), what="answer")
        (job,) = _jobs(settings)
        finish_sample(settings, job.id, 2)
        await wait_until(
            lambda: (r := outbox(settings, job.id, "images")) and r.state == "posted", what="post"
        )
    follow_ups = f"^/webhooks/{fake.app_id}/{inter['token']}$"
    assert len([r for r in fake.rest("POST", follow_ups) if r.files]) == 1
    first = outbox(settings, job.id, "images")
    assert first is not None
    # The crash: the follow-up reached Discord, but "posted" never reached the database.
    again = await restart_after_lost_commit(settings, fake, first.id, job.id)
    assert again.platform_message_id == first.platform_message_id
    assert len([r for r in fake.rest("POST", follow_ups) if r.files]) == 1, "not posted twice"
    assert not images_posts(fake, fake.channel_id)


def noisy_png(side: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((side, side), 80 + seed).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


async def test_images_fit_the_upload_limit_and_ten_per_message(fake: FakeDiscord, settings: Settings) -> None:
    limit = 120_000
    settings = settings.model_copy(update={"discord_max_upload_bytes": limit})
    thread = fake.add_thread(fake.channel_id, "Rex")["id"]
    files = [(f"dreambot-1-{n}.png", noisy_png(256, n)) for n in range(12)]
    assert sum(len(d) for _, d in files[:10]) > limit
    async with running_bot(settings, fake, delivery=False) as bot:
        target = Target(1, "discord", fake.channel_id, thread, None, False)
        first = await bot.adapter.poster.post(
            target, OutMessage("12 pictures", files=files, buttons=[]), nonce="db77"
        )
    posts = fake.rest("POST", rf"^/channels/{thread}/messages$")
    assert [len(p.files) for p in posts] == [10, 2]
    assert all(sum(len(f.data) for f in p.files) <= limit for p in posts)
    assert {Image.open(io.BytesIO(f.data)).format for f in posts[0].files} <= {"WEBP", "JPEG"}
    assert all(f.filename.endswith((".webp", ".jpg")) for f in posts[0].files)
    assert posts[0].json["nonce"] == "db77" and posts[1].json["nonce"] == "db77.1"
    assert first == bot_messages(fake, thread)[0]["id"]
    for f in posts[0].files:
        Image.open(io.BytesIO(f.data)).verify()  # still pictures


async def test_delete_button_removes_the_images_message(fake: FakeDiscord, settings: Settings) -> None:
    thread = fake.add_thread(fake.channel_id, "Rex")["id"]
    job_id = sample_job(settings, fake.channel_id, thread)
    async with running_bot(settings, fake):
        await wait_until(
            lambda: (r := outbox(settings, job_id, "images")) and r.state == "posted", what="post"
        )
        (message,) = [m for m in bot_messages(fake, thread) if m["attachments"]]
        assert f"db:d:{job_id}" in custom_ids(message)
        alice = {**fake.new_user("alice"), "id": "42"}  # the owner
        fake.press(message, f"db:d:{job_id}", alice)
        await wait_until(
            lambda: fake.rest("DELETE", rf"^/channels/{thread}/messages/{message['id']}$"), what="the delete"
        )
    assert not [m for m in bot_messages(fake, thread) if m["attachments"]]


async def test_a_refusing_discord_is_recorded_not_fatal(fake: FakeDiscord, settings: Settings) -> None:
    thread = fake.add_thread(fake.channel_id, "Rex")["id"]
    fake.fail_next(
        "POST", rf"^/channels/{thread}/messages$", 403, {"message": "Missing Access", "code": 50001}
    )
    job_id = sample_job(settings, fake.channel_id, thread)
    async with running_bot(settings, fake) as bot:
        await wait_until(
            lambda: (r := outbox(settings, job_id, "images")) and r.state == "posted", what="post"
        )
        card = outbox(settings, job_id, "job_card")
        assert card is not None and card.state == "failed" and "Missing Access" in (card.error or "")
        assert not bot.adapter.client.is_closed()
