"""The web playground in headless Chromium, end to end with real workers.

A newcomer opens `/`, trains "Rex" (a dog) from four photos on a real `train` worker with
the tiny model, watches the job card go to done, asks "put my dog on the moon" (the
scripted LLM calls generate_images for Rex), sees the pictures from a real `sample`
worker load in the page, and presses 🎲 Reroll for a new card with new pictures.
Screenshots land in test-artifacts/playground-*.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy import select

from bot.web.app import create_app
from core.db import dispose_engines, session_scope
from core.models import Job, Subject
from core.settings import Settings
from tests.helpers.browser import LiveServer, chromium, screenshot
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.lora import sample_settings
from tests.helpers.photos import jpeg
from tests.helpers.training import FAST
from tests.helpers.workers import WorkerProcess

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

WAIT_MS = 240_000  # bounds a hang only; nothing here asserts a duration

# Records every status each job card shows, in order, whatever the page's redraw strategy.
WATCH_CARDS = """
window.__cardStates = {};
const note = (card) => {
  const seen = (window.__cardStates[card.dataset.job] ||= []);
  if (seen[seen.length - 1] !== card.dataset.status) seen.push(card.dataset.status);
};
new MutationObserver(() => document.querySelectorAll("[data-job]").forEach(note))
  .observe(document.getElementById("feed"), {subtree: true, childList: true, attributes: true});
"""

IMAGES_LOADED = """(sel) => {
  const imgs = [...document.querySelectorAll(sel)];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, fake_llm: FakeLLM) -> Iterator[Settings]:
    """The tiny model, a training of a few steps with two class images, the scripted LLM."""
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(FAST))
    yield sample_settings(
        tmp_path / "var",
        tiny_model_dir,
        train_config=config,
        llm_base_url=fake_llm.url,
        llm_api_key=SecretStr("sk-test"),
        llm_max_retries=0,
    )
    dispose_engines()


def _watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return errors


def _jobs(settings: Settings) -> list[tuple[int, str, str, dict[str, Any]]]:
    with session_scope(settings) as s:
        rows = s.scalars(select(Job).order_by(Job.id))
        return [(j.id, j.kind, j.status, dict(j.params or {})) for j in rows]


def test_train_chat_and_reroll_in_a_browser(settings: Settings, fake_llm: FakeLLM, tmp_path: Path) -> None:
    sampler = WorkerProcess(settings, "sample", tmp_path, name="sample")
    trainer: WorkerProcess | None = None
    try:
        with LiveServer(create_app(settings)) as server, chromium() as browser:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = _watch_errors(page)
            page.goto(server.url)
            page.evaluate(WATCH_CARDS)
            assert "dreambot" in page.title()
            screenshot(page, "playground-1-empty")

            # Train: open the form, name and class, four photos, submit.
            page.get_by_text("Train a new subject").click()
            page.get_by_label("Name").fill("Rex")
            page.get_by_label("What is it?").fill("dog")
            photos = [{"name": f"rex{i}.jpg", "mimeType": "image/jpeg", "buffer": jpeg(i)} for i in range(4)]
            # Two photos are too few: a friendly notice, the form kept as it was, nothing queued.
            page.set_input_files("#train-files", photos[:2])
            page.get_by_role("button", name="Train", exact=True).click()
            page.locator(".msg.notice", has_text="at least 3 photos").wait_for()
            assert page.locator(".job").count() == 0
            assert page.get_by_label("Name").input_value() == "Rex"
            screenshot(page, "playground-2-too-few-photos")
            page.set_input_files("#train-files", photos)
            assert page.locator("#train-thumbs img").count() == 4
            screenshot(page, "playground-2-train-form")
            page.get_by_role("button", name="Train", exact=True).click()
            card = page.locator(".job").first
            card.wait_for()
            assert "Training Rex" in card.inner_text() and card.get_attribute("data-status") == "queued"
            screenshot(page, "playground-3-train-queued")

            # Only now a training worker: the card was certainly seen queued first.
            trainer = WorkerProcess(settings, "train", tmp_path, name="train")
            trainer.wait_ready()
            sampler.wait_ready()
            page.wait_for_selector(
                ".job[data-status=running] .bar[aria-valuenow], .job[data-status=succeeded], .job[data-status=failed]",
                timeout=WAIT_MS,
            )
            screenshot(page, "playground-4-training")
            page.wait_for_selector(".job[data-status=succeeded], .job[data-status=failed]", timeout=WAIT_MS)
            assert card.get_attribute("data-status") == "succeeded", f"{card.inner_text()}\n{trainer.log()}"
            assert "done" in card.inner_text()
            screenshot(page, "playground-5-trained")
            with session_scope(settings) as s:
                rex = s.scalar(select(Subject).where(Subject.name == "Rex"))
                assert rex is not None and rex.status == "ready" and rex.class_noun == "dog"
                rex_id, token = rex.id, rex.token

            # Chat: the agent (scripted) draws Rex on the moon.
            fake_llm.call(
                "generate_images",
                {"prompt": "on the moon", "subject_ids": [rex_id], "n": 2, "steps": 2, "seed": 5},
            )
            fake_llm.say("Rex is going to the moon! 🚀")
            page.get_by_label("message").fill("put my dog on the moon")
            page.get_by_role("button", name="Send").click()
            page.locator(".msg.user", has_text="put my dog on the moon").wait_for()
            page.locator(".msg.assistant", has_text="Rex is going to the moon").wait_for(timeout=WAIT_MS)
            moon = page.locator(".job").nth(1)
            moon.locator(".images img").first.wait_for(timeout=WAIT_MS)
            assert moon.get_attribute("data-status") == "succeeded", sampler.log()
            assert moon.locator(".images img").count() == 2
            page.wait_for_function(IMAGES_LOADED, arg=".images img", timeout=WAIT_MS)
            screenshot(page, "playground-6-on-the-moon")

            # Reroll: a new card for the same request, new pictures.
            moon.get_by_role("button", name="🎲 Reroll").click()
            reroll = page.locator(".job").nth(2)
            reroll.wait_for(timeout=WAIT_MS)
            screenshot(page, "playground-7-reroll")
            reroll.locator(".images img").nth(1).wait_for(timeout=WAIT_MS)
            page.wait_for_function(IMAGES_LOADED, arg=".images img", timeout=WAIT_MS)
            screenshot(page, "playground-8-rerolled")
            states: dict[str, list[str]] = page.evaluate("window.__cardStates")
            user_said = [
                m["content"]
                for r in fake_llm.requests
                for m in r.messages
                if m["role"] == "user" and isinstance(m["content"], str)
            ]
    finally:
        sampler.stop()
        if trainer is not None:
            trainer.stop()

    # The database agrees with the page: one training, then the moon, then its reroll.
    rows = _jobs(settings)
    assert [(kind, status) for _id, kind, status, _p in rows] == [
        ("train", "succeeded"),
        ("sample", "succeeded"),
        ("sample", "succeeded"),
    ]
    (train_id, *_), (moon_id, _, _, moon_params), (reroll_id, _, _, reroll_params) = rows
    assert f"{token} dog" in moon_params["prompt"] and "moon" in moon_params["prompt"]
    assert reroll_params["prompt"] == moon_params["prompt"] and reroll_params.get("seed") != 5
    # Every card only moved forwards; the training was seen queued before it was done.
    order = ["queued", "running", "succeeded"]
    for job_id in (train_id, moon_id, reroll_id):
        seen = states[str(job_id)]
        assert seen == sorted(seen, key=order.index) and seen[-1] == "succeeded", (job_id, seen)
    assert states[str(train_id)][0] == "queued"
    assert any("put my dog on the moon" in text for text in user_said)
    assert errors == []  # no script error, no failed request
