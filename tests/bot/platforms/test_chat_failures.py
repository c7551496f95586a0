"""An LLM that fails, or none at all, on Discord and Slack: the person always gets a reply,
and it is stored in the conversation like any other.

The real discord.py and slack-bolt adapters against their local fakes; the LLM is the fake
OpenAI-compatible server answering 500 or 401, or not configured at all (basic mode).
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from agent.basic_mode import NO_LLM_NOTE
from agent.llm import ACCOUNT, UNAVAILABLE
from core.db import session_scope
from core.models import ConversationMessage
from core.settings import Settings
from tests.bot.platforms.slack_harness import (
    SlackBot,
    add_slack_user_with_subject,
    eventually,
    slack_settings,
)
from tests.helpers.discord_bot import all_jobs, bot_messages, discord_settings, running_bot, wait_until
from tests.helpers.fake_discord import FakeDiscord
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.fake_slack import BOT_USER_ID, FakeSlack
from tests.helpers.fake_slack_payloads import event_callback

POLITE = {500: UNAVAILABLE, 401: ACCOUNT}


def stored_replies(settings: Settings) -> list[str]:
    with session_scope(settings) as s:
        return list(
            s.scalars(
                select(ConversationMessage.content)
                .where(ConversationMessage.role == "assistant")
                .order_by(ConversationMessage.id)
            )
        )


@pytest.mark.parametrize("status", [500, 401])
async def test_discord_gets_the_polite_message_and_it_is_stored(
    sqlite_settings: Settings, fake_discord: FakeDiscord, fake_llm: FakeLLM, status: int
) -> None:
    settings = discord_settings(
        sqlite_settings,
        fake_discord,
        llm_base_url=fake_llm.url,
        llm_api_key=SecretStr("sk-x"),
        llm_max_retries=0,
    )
    fake_llm.fail(status)
    async with running_bot(settings, fake_discord):
        alice = fake_discord.new_user("alice")
        dm = fake_discord.add_dm(alice)
        fake_discord.say(dm, alice, "tell me a joke")
        [posted] = await wait_until(lambda: bot_messages(fake_discord, dm), what="the answer")
    assert posted["content"].startswith(POLITE[status])
    assert stored_replies(settings) == [posted["content"]]


async def test_discord_without_an_llm_answers_in_basic_mode(
    sqlite_settings: Settings, fake_discord: FakeDiscord
) -> None:
    settings = discord_settings(sqlite_settings, fake_discord)
    async with running_bot(settings, fake_discord):
        alice = fake_discord.new_user("alice")
        dm = fake_discord.add_dm(alice)
        fake_discord.say(dm, alice, "draw a castle at sunset, 2 pictures")
        [posted] = await wait_until(
            lambda: [m for m in bot_messages(fake_discord, dm) if "On it" in m["content"]], what="the answer"
        )
    [job] = all_jobs(settings)
    assert job.kind == "sample" and job.params["n"] == 2 and "castle at sunset" in job.params["prompt"]
    assert NO_LLM_NOTE in posted["content"] and f"job #{job.id}" in posted["content"]
    assert stored_replies(settings) == [posted["content"]]


def mention(text: str, ts: str) -> dict[str, object]:
    return {
        "type": "app_mention",
        "user": "U0ALICE",
        "text": f"<@{BOT_USER_ID}> {text}",
        "ts": ts,
        "channel": "C0GENERAL",
        "event_ts": ts,
    }


@pytest.mark.parametrize("status", [500, 401])
async def test_slack_gets_the_polite_message_and_it_is_stored(
    sqlite_settings: Settings, fake_slack: FakeSlack, fake_llm: FakeLLM, status: int
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack, fake_llm)
    fake_llm.fail(status)
    async with SlackBot(settings, fake_slack) as bot:
        await bot.send("events_api", event_callback(mention("tell me a joke", "1699999300.000100"), "EvJ"))
        [posted] = await eventually(lambda: fake_slack.methods("chat.postMessage"), "the answer posted")
    assert posted.args["text"].startswith(POLITE[status])
    assert posted.args["thread_ts"] == "1699999300.000100"
    assert stored_replies(settings) == [posted.args["text"]]


async def test_slack_with_the_llm_down_still_puts_the_dog_on_the_moon(
    sqlite_settings: Settings, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack, fake_llm)
    add_slack_user_with_subject(settings, "U0ALICE")
    fake_llm.fail(503)
    async with SlackBot(settings, fake_slack) as bot:
        await bot.send(
            "events_api", event_callback(mention("put my dog on the moon", "1699999400.000100"), "EvM")
        )
        [posted] = await eventually(lambda: fake_slack.methods("chat.postMessage"), "the answer posted")
    text = posted.args["text"]
    assert text.startswith(UNAVAILABLE) and "basic mode" in text and "job #" in text
    assert stored_replies(settings) == [text]
