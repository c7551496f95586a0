"""The playground in headless Chromium without an LLM, and with one that fails.

A fresh clone has no LLM key: chat runs in basic mode, the page says so, and "put my dog on
the moon" after a trained subject gives a picture from a real `sample` worker and a reply
naming the mode. With an LLM that answers 500 the polite message shows on the page and
stays there after a reload (it is stored like any reply). Screenshots land in
test-artifacts/playground-modes-*.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from itsdangerous import URLSafeSerializer
from pydantic import SecretStr
from sqlalchemy import select

from agent.chat_mode import llm_configured
from agent.llm import UNAVAILABLE
from bot.web.app import create_app
from bot.web.playground import COOKIE
from core.db import dispose_engines, session_scope
from core.models import ConversationMessage, Job, User
from core.settings import Settings
from tests.helpers.browser import LiveServer, chromium, screenshot
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.lora import make_lora_bytes, make_subject, sample_settings
from tests.helpers.workers import WorkerProcess

pytestmark = pytest.mark.slow
WAIT_MS = 180_000  # bounds a hang only


def visitor_of(page, settings: Settings) -> str:  # type: ignore[no-untyped-def]
    """The person id the playground gave this browser (its signed cookie)."""
    [cookie] = [c for c in page.context.cookies() if c["name"] == COOKIE]
    return str(URLSafeSerializer(settings.session_secret_value(), salt="playground").loads(cookie["value"]))


def web_user(settings: Settings, visitor: str) -> int:
    with session_scope(settings) as s:
        user = User(platform="web", platform_user_id=visitor, display_name="web visitor")
        s.add(user)
        s.flush()
        return user.id


def assistant_messages(settings: Settings) -> list[str]:
    with session_scope(settings) as s:
        rows = s.scalars(select(ConversationMessage).where(ConversationMessage.role == "assistant"))
        return [m.content for m in rows]


def test_without_an_llm_my_dog_goes_to_the_moon_in_basic_mode(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = sample_settings(tmp_path / "var", tiny_model_dir)
    assert not llm_configured(settings)
    sampler = WorkerProcess(settings, "sample", tmp_path, name="sample")
    try:
        with LiveServer(create_app(settings)) as server, chromium() as browser:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(server.url)
            assert "basic mode" in page.locator("#chat-mode").inner_text()
            # Rex, trained: a subject of this browser's person with a LoRA for the tiny model.
            owner = web_user(settings, visitor_of(page, settings))
            make_subject(settings, owner, make_lora_bytes(tiny_model_dir, seed=1), name="Rex", token="zwx")
            sampler.wait_ready()

            page.get_by_label("message").fill("put my dog on the moon")
            page.get_by_role("button", name="Send").click()
            reply = page.locator(".msg.assistant", has_text="Basic mode")
            reply.wait_for(timeout=WAIT_MS)
            assert "on the moon" in reply.inner_text() and "DREAMBOT_LLM_API_KEY" in reply.inner_text()
            card = page.locator(".job").first
            card.locator(".images img").first.wait_for(timeout=WAIT_MS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.images img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=WAIT_MS,
            )
            screenshot(page, "playground-modes-1-basic-moon")
            assert card.get_attribute("data-status") == "succeeded", sampler.log()
    finally:
        sampler.stop()
        dispose_engines()
    with session_scope(settings) as s:
        [job] = s.scalars(select(Job))
        assert job.kind == "sample" and "zwx dog" in job.params["prompt"] and "moon" in job.params["prompt"]
    [stored] = assistant_messages(settings)
    assert "Basic mode" in stored


def test_an_llm_answering_500_shows_the_polite_message_and_keeps_it(
    tmp_path: Path, tiny_model_dir: Path, fake_llm: FakeLLM
) -> None:
    settings = sample_settings(
        tmp_path / "var",
        tiny_model_dir,
        llm_base_url=fake_llm.url,
        llm_api_key=SecretStr("sk-test"),
        llm_max_retries=0,
    )
    fake_llm.fail(500)
    try:
        with LiveServer(create_app(settings)) as server, chromium() as browser:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(server.url)
            assert "LLM google/gemma-3-27b-it" in page.locator("#chat-mode").inner_text()
            page.get_by_label("message").fill("tell me a joke")
            page.get_by_role("button", name="Send").click()
            polite = page.locator(".msg.assistant", has_text="my language model isn't answering")
            polite.wait_for(timeout=WAIT_MS)
            screenshot(page, "playground-modes-2-llm-down")
            page.reload()  # the page's timeline comes from the database: it was stored
            page.locator(".msg.assistant", has_text="my language model isn't answering").wait_for(
                timeout=WAIT_MS
            )
            page.locator(".msg.user", has_text="tell me a joke").wait_for()
    finally:
        dispose_engines()
    [stored] = assistant_messages(settings)
    assert stored.startswith(UNAVAILABLE)
