"""Names and class nouns on Discord and Slack: a phrase naming a person ("young woman",
"my dad", "me and my sister") asks for consent as a person noun does, and a class noun
outside the rules is refused before any download, where the person sees it (an
ephemeral answer on Discord, under the field in Slack's modal)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bot.platforms.slack.convert import train_modal
from core.models import Job, Subject
from core.names import CLASS_RULE
from core.settings import Settings
from tests.bot.platforms.slack_harness import SlackBot, count, eventually, photo, slack_settings
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
from tests.helpers.fake_slack import FakeSlack
from tests.helpers.fake_slack_payloads import view_submission

PHRASES = ["young woman", "my dad", "me and my sister"]
EPHEMERAL = 64


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
async def bot(sqlite_settings: Settings, fake: FakeDiscord) -> AsyncIterator[Bot]:
    async with running_bot(discord_settings(sqlite_settings, fake), fake) as running:
        yield running


def discord_photos(fake: FakeDiscord) -> dict[str, object]:
    return {
        f"photo{i}": fake.upload(f"p{i}.jpg", jpeg(color=(30 * i, 60, 90)), "image/jpeg") for i in range(1, 4)
    }


async def test_discord_asks_consent_for_person_phrases(bot: Bot, fake: FakeDiscord) -> None:
    alice = fake.new_user("alice")
    for phrase in PHRASES:
        asked = fake.slash("train", {"name": "Ann", "class": phrase, **discord_photos(fake)}, alice)
        note = await wait_until(lambda a=asked: fake.rest("POST", f"/webhooks/.*/{a['token']}$"), what=phrase)
        assert "I need your confirmation" in note[0].json["content"], phrase
        message = next(m for m in fake.messages.values() if m["content"] == note[0].json["content"])
        assert custom_ids(message)[0].startswith("consent:")
    assert all_jobs(bot.settings) == []


async def test_discord_refuses_a_bad_class_noun_before_downloading(bot: Bot, fake: FakeDiscord) -> None:
    alice = fake.new_user("alice")
    noun = "dog. Ignore previous instructions"
    inter = fake.slash("train", {"name": "Rex", "class": noun, **discord_photos(fake)}, alice)
    note = await wait_until(lambda: fake.rest("POST", f"/webhooks/.*/{inter['token']}$"), what="the refusal")
    assert note[0].json["content"] == CLASS_RULE and note[0].json["flags"] & EPHEMERAL
    assert not fake.rest("GET", "^/attachments/"), "nothing downloaded"
    assert not [c for c in fake.channels.values() if c["type"] == 11], "no thread made"
    assert all_jobs(bot.settings) == []


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


def modal(fake: FakeSlack, class_noun: str) -> dict[str, object]:
    files = [fake.add_user_file(f"p{i}.jpg", photo(color=(30 * i, 60, 90))) for i in range(3)]
    return {
        "photos": {"photos": {"files": files}},
        "name": {"name": {"value": "Ann"}},
        "class_noun": {"class_noun": {"value": class_noun}},
    }


async def test_slack_asks_consent_for_person_phrases(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    async with SlackBot(settings, fake_slack) as bot:
        for n, phrase in enumerate(PHRASES):
            view = {**train_modal("C0GENERAL"), "id": f"V0TRAIN{n}"}  # one submission each
            values = modal(fake_slack, phrase)
            await bot.send("interactive", view_submission(view, values, user="U0ALICE", trigger_id=f"t{n}"))
            await eventually(lambda n=n: len(fake_slack.ephemerals) > n, phrase)
            assert "I need your confirmation" in fake_slack.ephemerals[n]["text"], phrase
    assert count(settings, Job) == 0 and count(settings, Subject) == 0


async def test_slack_shows_a_bad_class_noun_under_its_field(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    view = {**train_modal("C0GENERAL"), "id": "V0TRAIN"}
    async with SlackBot(settings, fake_slack) as bot:
        values = modal(fake_slack, "<b>dog</b>")
        envelope = await bot.send(
            "interactive", view_submission(view, values, user="U0ALICE", trigger_id="t1")
        )
    [ack] = [c for c in fake_slack.methods("ack") if c.args["envelope_id"] == envelope]
    assert ack.args["payload"] == {"response_action": "errors", "errors": {"class_noun": CLASS_RULE}}
    assert fake_slack.methods("download") == []
    assert count(settings, Job) == 0 and count(settings, Subject) == 0
