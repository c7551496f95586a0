"""Scenarios: people's data on Discord — /forget with its confirmation, consent for photos
of a person at /train, and the 🚩 Report button under a posted result.

The real discord.py bot runs against the fake Discord; jobs are finished in-test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from core.db import session_scope
from core.models import Image, Subject
from core.settings import Settings
from tests.helpers.discord_bot import (
    Bot,
    after,
    all_jobs,
    bot_messages,
    custom_ids,
    discord_settings,
    finish_sample,
    finish_training,
    running_bot,
    train_rex,
    wait_until,
)
from tests.helpers.fake_discord import FakeDiscord
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.photos import face_jpeg

EPHEMERAL = 64


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
def settings(sqlite_settings: Settings, fake: FakeDiscord) -> Iterator[Settings]:
    llm = FakeLLM().start()  # nothing here should reach the LLM; it answers if something does
    yield discord_settings(
        sqlite_settings, fake, llm_base_url=llm.url, llm_api_key=SecretStr("sk-test"), llm_max_retries=0
    )
    assert llm.requests == []
    llm.stop()


@pytest.fixture
async def bot(settings: Settings, fake: FakeDiscord) -> AsyncIterator[Bot]:
    async with running_bot(settings, fake) as running:
        yield running


def subjects(settings: Settings) -> list[Subject]:
    with session_scope(settings) as s:
        rows = list(s.scalars(select(Subject).order_by(Subject.id)))
        s.expunge_all()
        return rows


def arrival(fake: FakeDiscord, interaction: dict[str, Any]) -> Any:
    return next(d for d in fake.dispatched("INTERACTION_CREATE") if d.data["id"] == interaction["id"])


async def answer_of(fake: FakeDiscord, interaction: dict[str, Any]) -> dict[str, Any]:
    """The message an interaction was finally answered with (the edited placeholder or a follow-up)."""
    token = interaction["token"]
    await wait_until(
        lambda: (
            fake.rest("PATCH", f"/webhooks/.*/{token}/messages/@original")
            or fake.rest("POST", f"/webhooks/.*/{token}$")
        ),
        what="the answer",
    )
    followups = [m for m in fake.messages.values() if m.get("_token") == token]
    return followups[-1] if followups else fake.messages[fake.interactions[token]["original"]]


def person_photos(fake: FakeDiscord, n: int = 4) -> dict[str, Any]:
    return {
        f"photo{i + 1}": fake.upload(f"ann{i}.jpg", face_jpeg(i), "image/jpeg")  # one face each
        for i in range(n)
    }


async def test_forget_asks_first_and_the_confirm_button_deletes_the_subject(
    bot: Bot, fake: FakeDiscord, settings: Settings
) -> None:
    alice = fake.new_user("alice")
    await train_rex(fake, alice)
    await finish_training(settings, all_jobs(settings)[0].id)

    asked = fake.slash("forget", {"subject": "Rex"}, alice)
    question = await answer_of(fake, asked)
    # the interaction's own callback (delivery may post a card at the same moment)
    deferred = next(r for r in after(fake, arrival(fake, asked)) if f"/interactions/{asked['id']}/" in r.path)
    assert deferred.json == {"type": 5, "data": {"flags": EPHEMERAL}}, "only alice sees the question"
    assert question["_ephemeral"] and "permanently deletes “Rex”" in question["content"]
    (confirm,) = [c for c in custom_ids(question) if c.startswith("db:f:")]
    assert [s.name for s in subjects(settings)] == ["Rex"], "asking deletes nothing"

    pressed = fake.press(question, confirm, alice)
    done = await wait_until(lambda: fake.rest("POST", f"/webhooks/.*/{pressed['token']}$"), what="the note")
    assert done[0].json["content"].startswith("Done: I deleted that subject")
    assert done[0].json["flags"] & EPHEMERAL
    assert subjects(settings) == []
    # Delivery may post other cards meanwhile; of the calls answering this press, the ack is first.
    calls = [c for c in after(fake, arrival(fake, pressed)) if pressed["token"] in c.path]
    assert calls[0].path.endswith(f"/{pressed['token']}/callback") and calls[0].json["type"] == 6
    unbuttoned = fake.rest("PATCH", f"/webhooks/.*/{pressed['token']}/messages/@original")
    assert unbuttoned and unbuttoned[0].json["components"] == [], "the Forget button is taken away"
    assert unbuttoned[0].seq < done[0].seq
    assert question["components"] == []


async def test_forget_by_someone_unknown_says_there_is_nothing(bot: Bot, fake: FakeDiscord) -> None:
    asked = fake.slash("forget", {}, fake.new_user("bob"))
    answer = await answer_of(fake, asked)
    assert "nothing stored about you" in answer["content"] and answer["components"] == []


async def test_training_a_person_without_consent_asks_and_the_button_trains(
    bot: Bot, fake: FakeDiscord, settings: Settings
) -> None:
    alice = fake.new_user("alice")
    refused = fake.slash("train", {"name": "Ann", "class": "woman", **person_photos(fake)}, alice)
    note = await wait_until(lambda: fake.rest("POST", f"/webhooks/.*/{refused['token']}$"), what="the ask")
    text = note[0].json["content"]
    assert "I need your confirmation" in text and "consent: True" in text
    assert note[0].json["flags"] & EPHEMERAL
    assert all_jobs(settings) == [] and subjects(settings) == [], "nothing queued or stored"
    assert not [c for c in fake.channels.values() if c["type"] == 11], "no thread left behind"

    asked = next(m for m in fake.messages.values() if m["content"] == text)
    (button,) = custom_ids(asked)
    assert button.startswith("consent:")
    confirmed = fake.press(asked, button, alice)
    await wait_until(lambda: all_jobs(settings), what="the training job")
    answer = await answer_of(fake, confirmed)
    assert "training has started" in answer["content"]
    (subject,) = subjects(settings)
    assert subject.name == "Ann" and subject.consent_at is not None
    assert subject.consent_by == f"discord:{alice['id']}" and not subject.keep_photos
    assert len(fake.rest("GET", "^/attachments/")) == 8, "the same photos, fetched again for the press"


async def test_train_with_the_consent_option_is_queued_and_recorded(
    bot: Bot, fake: FakeDiscord, settings: Settings
) -> None:
    alice = fake.new_user("alice")
    options = {"name": "Ann", "class": "woman", **person_photos(fake), "consent": True, "keep_photos": True}
    inter = fake.slash("train", options, alice)
    answer = await answer_of(fake, inter)
    assert "training has started" in answer["content"]
    (job,) = all_jobs(settings)
    assert job.kind == "train" and job.status == "queued"
    (subject,) = subjects(settings)
    assert subject.id == job.subject_id and subject.consent_at is not None and subject.keep_photos


async def test_report_hides_the_image_and_deletes_the_result_message(
    bot: Bot, fake: FakeDiscord, settings: Settings
) -> None:
    alice, bob = fake.new_user("alice"), fake.new_user("bob")
    inter = fake.slash("imagine", {"prompt": "a cat on the moon", "n": 2}, alice)
    await answer_of(fake, inter)
    (sample,) = all_jobs(settings)
    image_ids = finish_sample(settings, sample.id, 2)
    posted = await wait_until(
        lambda: [m for m in bot_messages(fake, fake.channel_id) if m["attachments"]], what="the images"
    )
    assert f"db:x:{image_ids[1]}" in custom_ids(posted[0])

    pressed = fake.press(posted[0], f"db:x:{image_ids[1]}", bob)  # anyone may report
    note = await wait_until(lambda: fake.rest("POST", f"/webhooks/.*/{pressed['token']}$"), what="the note")
    assert "hidden that picture" in note[0].json["content"] and note[0].json["flags"] & EPHEMERAL
    removed = fake.rest("DELETE", rf"^/channels/{fake.channel_id}/messages/{posted[0]['id']}$")
    assert len(removed) == 1 and removed[0].seq < note[0].seq
    assert posted[0]["id"] not in [m["id"] for m in bot_messages(fake, fake.channel_id)]
    with session_scope(settings) as s:
        hidden = {i.id: (i.hidden_at is not None, i.review) for i in s.scalars(select(Image))}
    assert hidden == {image_ids[0]: (False, None), image_ids[1]: (True, "pending")}
