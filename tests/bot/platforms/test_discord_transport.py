"""Endpoints are one setting for the process, discord.py is untouched by default; the
message-content intent is optional."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import discord.utils
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter, async_context
from pydantic import SecretStr

from bot.chat.service import ConversationService
from bot.platforms.discord.adapter import DiscordAdapter
from bot.platforms.discord.transport import Endpoints, pointed_at
from core.settings import Settings
from tests.helpers.discord_bot import discord_settings, running_bot, wait_until
from tests.helpers.fake_discord import TOKEN, FakeDiscord
from tests.helpers.fake_discord_payloads import MESSAGE_CONTENT_INTENT
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.profile import settings_env

STOCK = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)  # discord.py as shipped
PLATFORMS = Path(__file__).parents[3] / "bot" / "platforms" / "discord"
DISCORD_MODULES = [p.name for p in PLATFORMS.glob("*.py")]
INTERNAL_MODULES = {"http", "gateway", "state", "webhook", "async_", "handle_message_parameters"}


@pytest.fixture
def fakes() -> Iterator[tuple[FakeDiscord, FakeDiscord]]:
    a, b = FakeDiscord().start(), FakeDiscord().start()
    yield a, b
    a.stop()
    b.stop()


async def test_each_run_talks_to_the_discord_it_names_and_puts_discord_py_back(
    sqlite_settings: Settings, fakes: tuple[FakeDiscord, FakeDiscord]
) -> None:
    """The endpoints are process-wide, so the two Discords are served one after the other."""
    a, b = fakes
    settings_a = discord_settings(sqlite_settings, a)  # gateway asked from GET /gateway/bot
    settings_b = discord_settings(sqlite_settings, b, discord_gateway_url=b.gateway_url)
    ia = await ask_once(a, settings_a, "quota")
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == STOCK, "discord.py put back"
    ib = await ask_once(b, settings_b, "models")
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == STOCK, "discord.py put back"
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


async def ask_once(fake: FakeDiscord, settings: Settings, command: str) -> dict[str, Any]:
    """Run the bot against `fake` (discord.py pointed there meanwhile) until `command` is answered."""
    async with running_bot(settings, fake, delivery=False):
        assert fake.api_base == Route.BASE
        assert str(DiscordWebSocket.DEFAULT_GATEWAY) == fake.gateway_url
        inter = fake.slash(command, {}, fake.new_user("alice"))
        await wait_until(
            lambda: fake.rest("PATCH", f"/{inter['token']}/messages/@original"), what=f"the /{command} answer"
        )
    return inter


def test_a_second_discord_in_one_process_is_refused() -> None:
    first, other = "http://127.0.0.1:1/api/v10", "http://127.0.0.1:2/api/v10"
    with pointed_at(Endpoints(first, None)):
        refused = pointed_at(Endpoints(other, None))
        with pytest.raises(RuntimeError, match="one Discord per process"), refused:
            pass
        with pointed_at(Endpoints(first + "/", "ws://127.0.0.1:1/gateway")):  # the same one again: fine
            assert first == Route.BASE
        assert (first, STOCK[1]) == (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    assert (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY) == STOCK


def test_with_the_default_settings_discord_py_runs_as_shipped(sqlite_settings: Settings) -> None:
    defaults = {
        name: Settings.model_fields[name].default for name in ("discord_api_base", "discord_gateway_url")
    }
    settings = sqlite_settings.model_copy(update={"discord_token": SecretStr(TOKEN), **defaults})
    adapter = DiscordAdapter(settings, ConversationService(settings))
    http = adapter.client.http
    assert type(http) is HTTPClient and adapter.client._connection.http is http
    with pointed_at(adapter.endpoints):
        assert Route.BASE is STOCK[0] and DiscordWebSocket.DEFAULT_GATEWAY is STOCK[1]
        assert type(async_context.get()) is AsyncWebhookAdapter
    assert Route.BASE is STOCK[0] and DiscordWebSocket.DEFAULT_GATEWAY is STOCK[1]


@pytest.mark.parametrize("module", sorted(set(DISCORD_MODULES) - {"transport.py"}))
def test_discord_code_outside_the_transport_uses_only_public_discord_py(module: str) -> None:
    """Only `transport.py` may touch discord.py's module-level endpoints; the rest (the
    poster above all) imports no private name or internal module and reaches no internals."""
    tree = ast.parse((PLATFORMS / module).read_text())
    used: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("discord"):
            used += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            used += [alias.name for alias in node.names if alias.name.startswith("discord")]
        elif isinstance(node, ast.Attribute):
            used.append(dotted(node))
    private = [name for name in used if not public(name)]
    assert not private, f"{module} reaches into discord.py: {private}"


def dotted(node: ast.Attribute) -> str:
    """`a.b.c` for an attribute chain (`?` for a root that is not a name, e.g. a call)."""
    parts = [node.attr]
    value = node.value
    while isinstance(value, ast.Attribute):
        parts.append(value.attr)
        value = value.value
    return ".".join([getattr(value, "id", "?"), *reversed(parts)])


def public(name: str) -> bool:
    root, *rest = name.split(".")
    if root in ("self", "cls"):
        rest = rest[1:]  # a class's own attributes may be private; what it reaches through them not
    hidden = [p for p in rest if p.startswith("_") and not p.endswith("__")]
    if hidden or "http" in rest:  # client.http: discord.py's internal HTTPClient
        return False
    if root != "discord":
        return True
    if rest[:1] == ["utils"]:
        return rest[1:2] == [] or rest[1] in discord.utils.__all__
    return not set(rest) & INTERNAL_MODULES


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
