"""Retention: with the clock moved forward, the clean-up removes exactly what the settings
say (rows and files) and nothing else; a dry run counts the same and deletes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select, update
from typer.testing import CliRunner

from bot.chat.service import ConversationService
from bot.cli.main import app
from bot.process.runtime import clean_up_periodically
from core.db import session_scope
from core.dbclock import db_now
from core.models import ConversationMessage, Image, Job, Photo, PlatformEvent, Subject
from core.retention import RetentionReport, clean_up
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.profile import settings_env
from tests.privacy.conftest import finish_sample, finish_training, photos, speaker, with_llm
from tests.privacy.test_forget import stored_files

DAY = 86400


def age(settings: Settings, model: Any, ids: list[int], days: float, column: str = "created_at") -> None:
    """Move rows `days` into the past on the database's clock."""
    with session_scope(settings) as s:
        s.execute(update(model).where(model.id.in_(ids)).values({column: db_now(-days * DAY)}))


def ids(settings: Settings, column: Any) -> set[int]:
    with session_scope(settings) as s:
        return set(s.scalars(select(column)))


async def test_clean_up_removes_exactly_what_the_settings_say(
    db_settings: Settings, fake_llm: FakeLLM
) -> None:
    settings = with_llm(
        db_settings,
        fake_llm,
        retention_images_days=90,
        retention_conversation_days=30,
        retention_failed_days=7,
        trainings_per_day=10,
        max_concurrent_jobs=10,
    )
    service = ConversationService(settings)
    storage = storage_from_settings(settings)
    me = "U-ret"
    # Trained subjects: one whose photos go, one whose person keeps them; one still training.
    plain = await service.train(speaker(me, "t1"), "Mug", "mug", photos(3))
    kept = await service.train(speaker(me, "t2"), "Cup", "cup", photos(3, 10), keep_photos=True)
    pending = await service.train(speaker(me, "t3"), "Pot", "pot", photos(3, 20))
    assert plain.job_ids and kept.job_ids and pending.job_ids, pending.text
    mug = finish_training(settings, plain.job_ids[0])
    cup = finish_training(settings, kept.job_ids[0])
    # A trained subject a queued job still uses keeps its photos for now.
    lid_train = await service.train(speaker(me, "t5"), "Lid", "lid", photos(3, 60))
    lid = finish_training(settings, lid_train.job_ids[0])
    assert (await service.imagine(speaker(me, "i5"), "Lid waiting", 1)).job_ids
    # Images: an old job and a new one.
    old_job = await service.imagine(speaker(me, "i1"), "Mug old", 1)
    new_job = await service.imagine(speaker(me, "i2"), "Mug new", 1)
    old_images = finish_sample(settings, old_job.job_ids[0], 2)
    new_images = finish_sample(settings, new_job.job_ids[0], 1)
    age(settings, Image, old_images, 91)
    age(settings, Image, new_images, 89)
    # Chat: an old message with a photo, a new one.
    fake_llm.say("old reply")
    await service.chat(speaker(me, "c1"), "old words", photos(1, 30))
    with session_scope(settings) as s:
        old_msgs = list(s.scalars(select(ConversationMessage.id)))
    fake_llm.say("new reply")
    await service.chat(speaker(me, "c2"), "new words", photos(1, 31))
    age(settings, ConversationMessage, old_msgs, 31)
    # Failed work: an old failed sample with a partial file, a recent one, an old failed training.
    failed_old = await service.imagine(speaker(me, "i3"), "Mug failed", 1)
    failed_new = await service.imagine(speaker(me, "i4"), "Mug failed too", 1)
    for job_id in (failed_old.job_ids[0], failed_new.job_ids[0]):
        storage.put(f"jobs/{job_id}/partial.png", b"partial")
        with session_scope(settings) as s:
            s.execute(update(Job).where(Job.id == job_id).values(status="failed", finished_at=db_now()))
    age(settings, Job, failed_old.job_ids, 8, "finished_at")
    age(settings, Job, failed_new.job_ids, 6, "finished_at")
    broken = await service.train(speaker(me, "t4"), "Jar", "jar", photos(3, 40))
    with session_scope(settings) as s:
        jar = s.scalar(select(Job.subject_id).where(Job.id == broken.job_ids[0]))
        s.execute(
            update(Job)
            .where(Job.id == broken.job_ids[0])
            .values(status="failed", finished_at=db_now(-8 * DAY))
        )
        s.execute(
            update(Subject).where(Subject.id == jar).values(status="failed", updated_at=db_now(-8 * DAY))
        )
    # A file left by a worker whose job was forgotten, and old event ids.
    storage.put("jobs/999999/0.png", b"orphan")
    with session_scope(settings) as s:
        old_events = list(s.scalars(select(PlatformEvent.id).where(PlatformEvent.event_id.in_(["t1", "t2"]))))
    age(settings, PlatformEvent, old_events, 8, "received_at")

    photos_before, files_before = ids(settings, Photo.id), stored_files(settings)
    with session_scope(settings) as s:
        mug_photos = {p.storage_key for p in s.scalars(select(Photo).where(Photo.subject_id.in_([mug, jar])))}
        old_chat_files = {k for k in files_before if any(f"/messages/{m}/" in k for m in old_msgs)}
    assert len(old_chat_files) == 1
    expected_gone = (
        mug_photos
        | {f"jobs/{old_job.job_ids[0]}/{i}.png" for i in range(2)}
        | old_chat_files
        | {f"jobs/{failed_old.job_ids[0]}/partial.png", "jobs/999999/0.png"}
    )
    expected = RetentionReport(
        training_photos=3,
        images=2,
        messages=len(old_msgs),
        failed_jobs=1,
        failed_subjects=1,
        orphan_files=1,
        platform_events=2,
        files=len(expected_gone),
    )

    dry = clean_up(settings, dry_run=True)
    assert dry == RetentionReport(**{**expected.__dict__, "dry_run": True})
    assert stored_files(settings) == files_before and ids(settings, Photo.id) == photos_before

    report = clean_up(settings)
    assert report == expected
    files = stored_files(settings)
    assert set(files_before) - set(files) == expected_gone and set(files) <= set(files_before)
    with session_scope(settings) as s:
        left = {(p.subject_id) for p in s.scalars(select(Photo))}
        assert left == {cup, lid, pending_subject(s, pending.job_ids[0])}
        assert set(s.scalars(select(Image.id))) == set(new_images)
        assert set(s.scalars(select(ConversationMessage.id))).isdisjoint(old_msgs)
        assert s.scalar(select(ConversationMessage.id)) is not None  # the new exchange stays
        assert s.get(Subject, jar) is None and s.get(Subject, mug) is not None  # the model stays
        assert s.get(Job, failed_old.job_ids[0]) is not None  # job rows stay, their leftovers go
    assert f"jobs/{failed_new.job_ids[0]}/partial.png" in files
    assert f"subjects/{mug}/lora.safetensors" in files

    assert clean_up(settings) == RetentionReport()  # nothing more to do: exactly once


def pending_subject(session: Any, job_id: int) -> int:
    return session.scalar(select(Job.subject_id).where(Job.id == job_id))


async def test_keeping_everything_and_the_cli_dry_run(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(
        update={
            "retention_keep_training_photos": True,
            "retention_images_days": 0,
            "retention_conversation_days": 0,
            "retention_failed_days": 0,
        }
    )
    service = ConversationService(settings)
    trained = await service.train(speaker("U-k", "t1"), "Mug", "mug", photos(3))
    finish_training(settings, trained.job_ids[0])
    sample = await service.imagine(speaker("U-k", "i1"), "Mug", 1)
    image_ids = finish_sample(settings, sample.job_ids[0], 1)
    age(settings, Image, image_ids, 1000)
    assert clean_up(settings) == RetentionReport()

    runner = CliRunner()
    env = settings_env(sqlite_settings)  # the defaults: trained photos go
    result = runner.invoke(app, ["retention", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "would remove training photos: 3" in result.output
    assert len(ids(sqlite_settings, Photo.id)) == 3
    result = runner.invoke(app, ["retention"], env=env)
    assert "removed training photos: 3" in result.output and ids(sqlite_settings, Photo.id) == set()


async def test_the_bot_process_cleans_up_periodically(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(update={"retention_interval": 0.05})
    storage = storage_from_settings(settings)
    storage.put("jobs/424242/0.png", b"orphan")
    stop = asyncio.Event()
    loop = asyncio.create_task(clean_up_periodically(settings, stop))
    for _ in range(200):
        if not storage.exists("jobs/424242/0.png"):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert not storage.exists("jobs/424242/0.png")
    off = asyncio.create_task(
        clean_up_periodically(sqlite_settings.model_copy(update={"retention_interval": 0}), stop)
    )
    await asyncio.wait_for(off, 1)  # 0: never runs, returns at once
