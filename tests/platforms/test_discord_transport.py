"""Endpoints are per-client settings; the message-content intent is optional."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from discord.http import Route
from pydantic import SecretStr

from bot.platforms.discord import DiscordAdapter
from bot.service import ConversationService
from core.settings import Settings
from tests.helpers.discord_bot import discord_settings, running_bot, wait_until
from tests.helpers.fake_discord import TOKEN, FakeDiscord
from tests.helpers.fake_discord_payloads import MESSAGE_CONTENT_INTENT
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.profile import settings_env


@pytest.fixture
def fakes() -> Iterator[tuple[FakeDiscord, FakeDiscord]]:
    a, b = FakeDiscord().start(), FakeDiscord().start()
    yield a, b
    a.stop()
    b.stop()


async def test_two_clients_in_one_process_each_talk_to_their_own_discord(
    sqlite_settings: Settings, fakes: tuple[FakeDiscord, FakeDiscord]
) -> None:
    a, b = fakes
    alice = a.new_user("alice")
    bob = b.new_user("bob")
    settings_a = discord_settings(sqlite_settings, a)  # gateway asked from GET /gateway/bot
    settings_b = discord_settings(sqlite_settings, b, discord_gateway_url=b.gateway_url)
    async with running_bot(settings_a, a, delivery=False), running_bot(settings_b, b, delivery=False):
        ia = a.slash("quota", {}, alice)
        ib = b.slash("models", {}, bob)
        await wait_until(lambda: a.rest("PATCH", f"/{ia['token']}/messages/@original"), what="answer at a")
        await wait_until(lambda: b.rest("PATCH", f"/{ib['token']}/messages/@original"), what="answer at b")
    assert Route.BASE == "https://discord.com/api/v10", "no global was changed"
    for fake in (a, b):
        assert len(fake.identifies) == 1 and len(fake.rest("PUT", "/commands$")) == 1
        names = {c["name"] for c in fake.commands}
        assert names == {"train", "imagine", "models", "jobs", "cancel", "quota", "forget"}
        train = next(c for c in fake.commands if c["name"] == "train")
        assert [o["name"] for o in train["options"] if o["type"] == 11] == [f"photo{n}" for n in range(1, 11)]
        assert [o["name"] for o in train["options"] if o["type"] == 5] == ["consent", "keep_photos"]
    assert a.rest("GET", "^/gateway/bot$") and not b.rest("GET", "^/gateway")
    assert "Today:" in a.rest("PATCH", "/messages/@original")[0].json["content"]
    assert "no subjects yet" in b.rest("PATCH", "/messages/@original")[0].json["content"]
    assert not a.rest(path=ib["token"]) and not b.rest(path=ia["token"])


async def test_refused_message_content_intent_falls_back_to_mentions(
    sqlite_settings: Settings,
) -> None:
    fake = FakeDiscord(refuse_message_content=True).start()
    llm = FakeLLM().start()
    try:
        settings = discord_settings(
            sqlite_settings, fake, llm_base_url=llm.url, llm_api_key=SecretStr("sk"), llm_max_retries=0
        )
        alice = fake.new_user("alice")
        thread = fake.add_thread(fake.channel_id, "chat")["id"]
        async with running_bot(settings, fake, delivery=False) as bot:
            assert [bool(i["intents"] & MESSAGE_CONTENT_INTENT) for i in fake.identifies] == [True, False]
            assert bot.adapter.message_content is False
            llm.say("Hi Alice!")
            fake.say(thread, alice, "anyone there?")  # no mention: its content is not ours to read
            fake.say(thread, alice, "hello", mention=True)
            await wait_until(
                lambda: [m for m in fake.channel_messages(thread) if m["content"] == "Hi Alice!"],
                what="the answer to the mention",
            )
        assert len(llm.requests) == 1 and "hello" in str(llm.requests[0].messages[-1]["content"])
        assert len(fake.rest("POST", f"^/channels/{thread}/typing$")) == 1
    finally:
        fake.stop()
        llm.stop()


async def test_dreambot_up_reaches_the_discord_named_by_its_environment(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """DREAMBOT_DISCORD_API_BASE works through `dreambot up` itself, not only in-process."""
    fake = FakeDiscord().start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = settings_env(sqlite_settings.model_copy(update={"web_port": port}))
    env.update(DREAMBOT_DISCORD_TOKEN=TOKEN, DREAMBOT_DISCORD_API_BASE=fake.api_base)
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "up", "--no-workers"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        alice = fake.new_user("alice")
        await wait_until(lambda: fake.identifies or proc.poll() is not None, timeout=90, what="IDENTIFY")
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        await wait_until(lambda: fake.rest("PUT", "/commands$"), timeout=30, what="commands")
        inter = fake.slash("quota", {}, alice)
        await wait_until(
            lambda: fake.rest("PATCH", f"/{inter['token']}/messages/@original"), timeout=30, what="the answer"
        )
        assert fake.rest("POST", f"/interactions/{inter['id']}/")[0].json["type"] == 5
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
        fake.stop()
    assert "dreambot stopped" in (tmp_path / "up.log").read_text(), "a clean stop on SIGINT"


async def test_a_refused_token_turns_the_adapter_off_not_the_bot(
    sqlite_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeDiscord().start()
    try:
        settings = discord_settings(sqlite_settings, fake, discord_token=SecretStr("not-the-token"))
        adapter = DiscordAdapter(settings, ConversationService(settings))
        await asyncio.wait_for(adapter.run(asyncio.Event()), 30)  # returns instead of raising
        assert "refused DREAMBOT_DISCORD_TOKEN" in caplog.text
        assert fake.rest("GET", "^/users/@me$") and not fake.identifies
    finally:
        fake.stop()
