"""Fakes the chat-platform scenarios share: the LLM, Discord and Slack servers over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.fake_discord import FakeDiscord
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.fake_slack import FakeSlack


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def fake_discord() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()
