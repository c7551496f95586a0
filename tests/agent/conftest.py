"""Fixtures for the agent tests: the fake LLM server and a small world of people and subjects."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from PIL import Image
from pydantic import SecretStr

from core.db import session_scope
from core.models import Conversation, Subject, User
from core.settings import Settings
from tests.helpers.fake_llm import FakeLLM


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


def with_llm(settings: Settings, fake: FakeLLM, **overrides: object) -> Settings:
    values = dict(
        llm_base_url=fake.url,
        llm_api_key=SecretStr("sk-test"),
        llm_max_retries=2,
        llm_retry_max_wait=2.0,
        llm_model="google/gemma-3-27b-it",
    )
    values.update(overrides)
    return settings.model_copy(update=values)


@pytest.fixture
def agent_settings(sqlite_settings: Settings, fake_llm: FakeLLM) -> Settings:
    return with_llm(sqlite_settings, fake_llm)


@dataclass
class World:
    user_id: int
    other_id: int
    conversation_id: int


def add_user(settings: Settings, platform_user_id: str) -> int:
    with session_scope(settings) as session:
        user = User(platform="web", platform_user_id=platform_user_id, display_name=platform_user_id)
        session.add(user)
        session.flush()
        return user.id


def add_subject(
    settings: Settings, owner_id: int, name: str, token: str, class_noun: str, *, trained: bool = True
) -> int:
    with session_scope(settings) as session:
        subject = Subject(
            owner_id=owner_id,
            name=name,
            token=token,
            class_noun=class_noun,
            base_model=settings.base_model,
            status="ready" if trained else "pending",
            artifact_key=f"subjects/x/{token}.safetensors" if trained else None,
            artifact_sha256="0" * 64 if trained else None,
        )
        session.add(subject)
        session.flush()
        return subject.id


def add_conversation(settings: Settings, user_id: int, channel: str = "c1") -> int:
    with session_scope(settings) as session:
        conv = Conversation(platform="web", channel_id=channel, thread_id="t1", user_id=user_id)
        session.add(conv)
        session.flush()
        return conv.id


@pytest.fixture
def world(agent_settings: Settings) -> World:
    user = add_user(agent_settings, "alice")
    other = add_user(agent_settings, "mallory")
    return World(user, other, add_conversation(agent_settings, user))


def photo(
    width: int = 1600, height: int = 1200, color: tuple[int, int, int] = (200, 120, 40), fmt: str = "JPEG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()
