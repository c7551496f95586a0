"""Attachments over the upload limits are refused with a reply the person sees, and the bot
stops downloading at the limit: a size field that understates a file (or ten files that
each pass but add up) costs no more than the limit. Real discord.py and slack-bolt clients
against the fake servers, which count the bytes they manage to serve."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bot.platforms.slack.convert import train_modal
from core.models import Job, Subject
from core.settings import Settings
from tests.bot.platforms.slack_harness import SlackBot, count, eventually, slack_settings
from tests.helpers.discord_bot import Bot, all_jobs, bot_messages, discord_settings, running_bot, wait_until
from tests.helpers.fake_discord import FakeDiscord
from tests.helpers.fake_slack import FakeSlack
from tests.helpers.fake_slack_payloads import event_callback, view_submission

MB = 1024 * 1024
BIG = b"\xff\xd8\xff\xe0" + bytes(39 * MB)  # under the 40 MB a file may have; three pass 100 MB
HUGE = b"\xff\xd8\xff\xe0" + bytes(60 * MB)
TOGETHER = "please send at most 100 MB at once"


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
async def bot(sqlite_settings: Settings, fake: FakeDiscord) -> AsyncIterator[Bot]:
    async with running_bot(discord_settings(sqlite_settings, fake), fake) as running:
        yield running


async def test_discord_train_stops_at_the_total_limit(bot: Bot, fake: FakeDiscord) -> None:
    alice = fake.new_user("alice")
    photos = {f"photo{i}": fake.upload(f"p{i}.jpg", BIG, "image/jpeg", declared_size=MB) for i in range(1, 4)}
    inter = fake.slash("train", {"name": "Rex", "class": "dog", **photos}, alice)
    note = await wait_until(lambda: fake.rest("POST", f"/webhooks/.*/{inter['token']}$"), what="the refusal")
    assert TOGETHER in note[0].json["content"] and note[0].json["flags"] & 64  # only alice sees it
    assert all_jobs(bot.settings) == []
    assert sum(fake.served.values()) < 110 * MB, "the downloads went on past the limit"


async def test_discord_chat_stops_at_the_file_limit(bot: Bot, fake: FakeDiscord) -> None:
    alice = fake.new_user("alice")
    dm = fake.add_dm(alice)
    big = fake.upload("huge.jpg", HUGE, "image/jpeg", declared_size=MB)  # the size field understates it
    fake.say(dm, alice, "look at this", attachments=[big])
    [reply] = await wait_until(lambda: bot_messages(fake, dm), what="the refusal")
    assert reply["content"] == "“huge.jpg” is more than 40 MB; please send photos under 40 MB."
    assert sum(fake.served.values()) < 50 * MB


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


async def test_slack_train_refuses_on_declared_sizes_before_downloading(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    files = [fake_slack.add_user_file(f"p{i}.jpg", BIG) for i in range(3)]
    values = {
        "photos": {"photos": {"files": files}},
        "name": {"name": {"value": "Rex"}},
        "class_noun": {"class_noun": {"value": "dog"}},
    }
    view = {**train_modal("C0GENERAL"), "id": "V0TRAIN"}
    async with SlackBot(settings, fake_slack) as bot:
        await bot.send("interactive", view_submission(view, values, user="U0ALICE", trigger_id="t1"))
        await eventually(lambda: fake_slack.ephemerals, "the refusal")
    assert TOGETHER in fake_slack.ephemerals[-1]["text"] and fake_slack.ephemerals[-1]["user"] == "U0ALICE"
    assert fake_slack.methods("download") == [], "nothing is fetched when the sizes add up too much"
    assert count(settings, Job) == 0 and count(settings, Subject) == 0


async def test_slack_chat_stops_at_the_total_limit_when_sizes_understate(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    files = [fake_slack.add_user_file(f"p{i}.jpg", BIG, declared_size=MB) for i in range(3)]
    event = {
        "type": "message",
        "channel_type": "im",
        "channel": "D0ALICE",
        "user": "U0ALICE",
        "text": "look",
        "ts": "1700000000.000100",
        "files": files,
    }
    async with SlackBot(settings, fake_slack) as bot:
        await bot.send("events_api", event_callback(event, "Ev1"))
        await eventually(lambda: fake_slack.ephemerals, "the refusal")
    assert TOGETHER in fake_slack.ephemerals[-1]["text"]
    assert sum(fake_slack.served.values()) < 110 * MB
