"""DREAMBOT_LLM_SEND_PHOTOS: with the setting on, no request to the LLM carries an image
(the scripted server records every request); the photos are still kept for training."""

from __future__ import annotations

import json

import pytest

from agent.llm import LLMClient
from agent.loop import handle_message
from agent.memory import latest_photos
from agent.photo_policy import is_local_endpoint
from core.db import session_scope
from core.models import Conversation, User
from core.settings import OPENROUTER_URL, Settings
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.photos import jpeg
from tests.privacy.conftest import with_llm


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("https://openrouter.ai/api/v1", False),
        ("https://api.example.com/v1", False),
        ("http://8.8.8.8:8000/v1", False),
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://192.168.1.20:8000/v1", True),
        ("http://10.0.0.5/v1", True),
        ("http://vllm:8000/v1", True),  # a Docker service name
        ("http://gpu-box.internal:8000/v1", True),
    ],
)
def test_which_endpoints_are_local(url: str, local: bool) -> None:
    assert is_local_endpoint(url) is local


def world(settings: Settings) -> tuple[int, int]:
    with session_scope(settings) as s:
        user = User(platform="web", platform_user_id="p1", display_name="p1")
        s.add(user)
        s.flush()
        conv = Conversation(platform="web", channel_id="p1", thread_id="", user_id=user.id)
        s.add(conv)
        s.flush()
        return user.id, conv.id


def images_sent(fake: FakeLLM) -> int:
    """Image parts in every recorded request body."""
    return sum(json.dumps(r.body).count('"type": "image_url"') for r in fake.requests)


@pytest.mark.parametrize(
    ("mode", "endpoint", "sent"),
    [
        ("remote", "remote", True),
        ("local-only", "remote", False),
        ("local-only", "local", True),
        ("never", "local", False),
    ],
)
async def test_photos_reach_the_llm_only_where_allowed(
    sqlite_settings: Settings, fake_llm: FakeLLM, mode: str, endpoint: str, sent: bool
) -> None:
    talking = with_llm(sqlite_settings, fake_llm)  # the client always reaches the scripted server
    # What the policy judges: the configured endpoint (OpenRouter for "remote").
    configured = talking.model_copy(
        update={
            "llm_send_photos": mode,
            "llm_base_url": OPENROUTER_URL if endpoint == "remote" else fake_llm.url,
        }
    )
    user_id, conv_id = world(configured)
    fake_llm.say("Nice dog!")
    fake_llm.say("Still nice.")
    llm = LLMClient(talking)
    try:
        for n, text in enumerate(["here is my dog", "and again"]):
            await handle_message(
                configured,
                user_id=user_id,
                conversation_id=conv_id,
                text=text,
                photos=[jpeg(n), jpeg(n + 10)],
                event_key=f"web:e{n}",
                llm=llm,
            )
    finally:
        await llm.close()
    assert len(fake_llm.requests) == 2
    if sent:
        assert images_sent(fake_llm) == 4  # each message's two photos, with that message
    else:
        assert images_sent(fake_llm) == 0
        assert "data:image" not in json.dumps([r.body for r in fake_llm.requests])
        assert "Photos are not shared with you" in json.dumps(fake_llm.requests[0].body)
    assert len(latest_photos(configured, conv_id, user_id)) == 2  # kept for train_subject
