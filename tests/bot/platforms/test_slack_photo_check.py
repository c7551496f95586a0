"""Slack: the photo coach asks before /train queues anything; "Train anyway" trains on the
kept photos, "Cancel" trains nothing. The real slack-bolt app against the fake Slack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.platforms.slack.photo_check import CANCELLED
from core.db import session_scope
from core.models import Job, Photo, Subject
from core.settings import Settings
from tests.bot.platforms.slack_harness import SlackBot, count, eventually, photo, slack_settings
from tests.helpers.fake_slack import FakeSlack
from tests.helpers.fake_slack_payloads import block_action, slash_command, view_submission

CHANNEL = "C0GENERAL"
USER = "U0ALICE"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


async def submit_train(bot: SlackBot, fake: FakeSlack) -> None:
    """/train Rex with three good photos, a copy of the first and a nearly black one."""
    await bot.send(
        "slash_commands", slash_command(fake, "/train", "Rex", user=USER, channel=CHANNEL, trigger_id="t1")
    )
    await eventually(lambda: fake.views, "the modal")
    colours = [(0, 90, 30), (60, 90, 30), (120, 90, 30), (0, 90, 30), (3, 3, 3)]
    names = ["rex0.jpg", "rex1.jpg", "rex2.jpg", "rex0-again.jpg", "night.jpg"]
    files = [fake.add_user_file(n, photo(color=c)) for n, c in zip(names, colours, strict=True)]
    values = {
        "photos": {"photos": {"type": "file_input", "files": files}},
        "name": {"name": {"type": "plain_text_input", "value": "Rex"}},
        "class_noun": {"class_noun": {"type": "plain_text_input", "value": "dog"}},
    }
    await bot.send("interactive", view_submission(fake.views[-1], values, user=USER, trigger_id="t2"))


def buttons(message: dict[str, Any]) -> list[str]:
    return [e["action_id"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


async def press(
    bot: SlackBot, fake: FakeSlack, asked: dict[str, Any], action_id: str, user: str = USER
) -> None:
    message = {"ts": "1699999700.000700", "blocks": asked["blocks"]}
    trigger = f"tp-{action_id[-6:]}-{user}"
    await bot.send(
        "interactive", block_action(fake, message, action_id, user=user, channel=CHANNEL, trigger_id=trigger)
    )


async def test_the_question_comes_first_and_train_anyway_trains_the_kept_photos(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    async with SlackBot(settings, fake_slack) as bot:
        await submit_train(bot, fake_slack)
        [asked] = await eventually(lambda: fake_slack.ephemerals, "the question")
        lines = asked["text"].splitlines()
        assert lines[0] == "1 of 5 photos is too dark; 1 is a copy of another — 4 photos will be used."
        assert lines[-1] == "Train anyway?" and asked["user"] == USER
        assert count(settings, Job) == 0 and count(settings, Photo) == 0, "nothing queued before the answer"
        assert len(fake_slack.methods("chat.delete")) == 1, "the headline of an empty thread is gone"

        anyway, cancel = buttons(asked)
        assert anyway.startswith("photos:train:") and cancel.startswith("photos:cancel:")
        await press(bot, fake_slack, asked, anyway, user="U0BOB")  # not the uploader's: ignored
        await press(bot, fake_slack, asked, anyway)
        await eventually(lambda: count(settings, Job), "the training job")
        answer = await eventually(
            lambda: [
                c for c in fake_slack.methods("chat.postMessage") if "training has started" in c.args["text"]
            ],
            "the answer in the thread",
        )
        assert "training on 4: 1 was a copy" in answer[0].args["text"]
    with session_scope(settings) as s:
        (subject,) = s.scalars(select(Subject))
        (job,) = s.scalars(select(Job))
        assert job.subject_id == subject.id and len(subject.photos) == 4
    assert len(fake_slack.methods("download")) == 5, "the photos were not downloaded again"


async def test_cancel_trains_nothing(sqlite_settings: Settings, fake_slack: FakeSlack) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    async with SlackBot(settings, fake_slack) as bot:
        await submit_train(bot, fake_slack)
        [asked] = await eventually(lambda: fake_slack.ephemerals, "the question")
        _, cancel = buttons(asked)
        await press(bot, fake_slack, asked, cancel)
        [said] = await eventually(lambda: fake_slack.methods("respond"), "the cancel")
        assert said.args["text"] == CANCELLED and said.args["replace_original"]
    assert count(settings, Job) == 0 and count(settings, Subject) == 0
