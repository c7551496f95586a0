"""The conversation service: commands, refusals that lose nothing, duplicates, buttons."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from bot.chat.cards import button_id
from bot.chat.service import ConversationService, Origin, Upload
from core import jobs
from core.db import session_scope
from core.job_results import SampleResult
from core.models import Job, PlatformEvent, Subject, User
from core.settings import Settings
from tests.helpers.photos import PDF, corrupt_jpeg, huge_file, jpeg, png


def origin(event: str = "", user: str = "U1", thread: str = "T1") -> Origin:
    return Origin("slack", user, "Ada", channel_id="C1", thread_id=thread, event_id=event)


def count(settings: Settings, model: type) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def photos(n: int) -> list[Upload]:
    return [Upload(f"dog{i}.jpg", jpeg(i)) for i in range(n)]


async def test_train_queues_one_job_and_ignores_redelivery(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    reply = await service.train(origin("Ev1"), "Rex", "dog", photos(5))
    assert len(reply.job_ids) == 1 and "Rex" in reply.text
    again = await service.train(origin("Ev1"), "Rex", "dog", photos(5))
    assert again.duplicate and again.job_ids == []
    with session_scope(sqlite_settings) as s:
        job = s.get(Job, reply.job_ids[0])
        assert job is not None and job.kind == "train" and job.status == "queued"
        subject = s.get(Subject, job.subject_id)
        assert subject is not None and (subject.name, subject.class_noun) == ("Rex", "dog")
        assert len(subject.photos) == 5
    assert count(sqlite_settings, Job) == 1


@pytest.mark.parametrize(
    ("uploads", "says"),
    [
        ([Upload(f"d{i}.jpg", jpeg(i)) for i in range(2)], "at least 3 photos"),
        ([*photos(3), Upload("menu.pdf", PDF)], "menu.pdf"),
        ([*photos(3), Upload("broken.jpg", corrupt_jpeg())], "broken.jpg"),
        ([*photos(3), Upload("huge.jpg", huge_file())], "MB"),
        ([*photos(3), Upload("tiny.png", png(size=32))], "tiny.png"),
    ],
)
async def test_bad_uploads_get_a_friendly_reply_and_nothing_is_queued(
    sqlite_settings: Settings, uploads: list[Upload], says: str
) -> None:
    reply = await ConversationService(sqlite_settings).train(origin("Ev2"), "Rex", "dog", uploads)
    assert says in reply.text and reply.job_ids == []
    assert count(sqlite_settings, Job) == 0
    assert count(sqlite_settings, Subject) == 0
    assert list((sqlite_settings.data_dir / "storage").glob("subjects/**/*.jpg")) == []


async def ready_subject(settings: Settings, service: ConversationService) -> tuple[int, int]:
    reply = await service.train(origin("train"), "Rex", "dog", photos(3))
    job_id = reply.job_ids[0]
    lease = jobs.claim(settings, job_id, "w")
    assert lease is not None
    jobs.finish(settings, lease)
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.subject_id is not None
        subject = s.get(Subject, job.subject_id)
        assert subject is not None
        subject.status, subject.artifact_key = "ready", f"subjects/{subject.id}/lora.safetensors"
        return subject.id, job_id


def finish_sample(settings: Settings, job_id: int) -> int:
    lease = jobs.claim(settings, job_id, "w")
    assert lease is not None
    image_id = jobs.add_image(
        settings, lease, storage_key=f"jobs/{job_id}/0.png", seed=1, prompt="p", width=64, height=64
    )
    jobs.finish(settings, lease, SampleResult(image_ids=[image_id]))
    return image_id


async def test_imagine_names_subjects_and_buttons_act_only_for_the_owner(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    subject_id, _ = await ready_subject(sqlite_settings, service)
    reply = await service.imagine(origin("img1"), "Rex on the moon", n=2)
    assert len(reply.job_ids) == 1
    job = jobs.get_job(sqlite_settings, reply.job_ids[0])
    assert job.params["n"] == 2 and job.subject_id == subject_id
    assert "dog" in job.params["prompt"] and "moon" in job.params["prompt"]
    image_id = finish_sample(sqlite_settings, job.id)

    reroll = await service.press(origin("b1"), button_id("r", job.id))
    assert len(reroll.job_ids) == 1
    rerolled = jobs.get_job(sqlite_settings, reroll.job_ids[0])
    assert rerolled.params["prompt"] == job.params["prompt"] and "seed" not in rerolled.params
    variation = await service.press(origin("b2"), button_id("v", image_id))
    assert jobs.get_job(sqlite_settings, variation.job_ids[0]).params["variation_of"] == image_id

    stranger = await service.press(origin("b3", user="U2"), button_id("v", image_id))
    assert stranger.job_ids == [] and stranger.ephemeral
    gone = await service.press(origin("b4", user="U2"), button_id("d", job.id))
    assert gone.delete_job_id is None
    deleted = await service.press(origin("b5"), button_id("d", job.id))
    assert deleted.delete_job_id == job.id
    stale = await service.press(origin("b6"), "something-old")
    assert "older version" in stale.text


async def test_lists_cancel_and_quota(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    assert "no subjects" in (await service.models(origin())).text
    reply = await service.train(origin("t"), "Mug", "mug", photos(3))
    assert "Mug (mug) — training" in (await service.models(origin())).text
    assert f"#{reply.job_ids[0]} train — queued" in (await service.list_jobs(origin())).text
    assert "cancelled" in (await service.cancel(origin("c"), reply.job_ids[0])).text
    assert "0/200 images" in (await service.quota(origin())).text
    assert "isn't one of your" in (await service.cancel(origin("c2", user="U9"), reply.job_ids[0])).text


async def test_blocked_people_are_refused(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    await service.quota(origin())
    with session_scope(sqlite_settings) as s:
        s.execute(User.__table__.update().values(is_blocked=True))
    reply = await service.train(origin("x"), "Rex", "dog", photos(3))
    assert "can't use dreambot" in reply.text and count(sqlite_settings, Job) == 0
    assert count(sqlite_settings, PlatformEvent) == 1  # recorded before any work
