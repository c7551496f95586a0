"""The playground's train form in headless Chromium: each chosen photo gets the photo
coach's badge before Train is pressed, nothing is queued until "Train anyway", and then
the training card shows the crops it will learn from (without the dropped copy)."""

from __future__ import annotations

import io

from PIL import Image
from sqlalchemy import func, select

from bot.web.app import create_app
from core.db import session_scope
from core.models import Job, Photo, Subject
from core.settings import Settings
from tests.helpers.browser import LiveServer, chromium, screenshot
from tests.helpers.photos import jpeg


def dark_photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (600, 600), (4, 4, 4)).save(out, "JPEG")
    return out.getvalue()


def count(settings: Settings, model: type) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_badges_before_train_and_train_anyway_trains_the_kept_photos(sqlite_settings: Settings) -> None:
    settings = sqlite_settings
    contents = [jpeg(1), jpeg(2), jpeg(1), jpeg(3), dark_photo()]
    names = ["rex1.jpg", "rex2.jpg", "rex1-again.jpg", "rex3.jpg", "night.jpg"]
    photos = [
        {"name": n, "mimeType": "image/jpeg", "buffer": d} for n, d in zip(names, contents, strict=True)
    ]
    with LiveServer(create_app(settings)) as server, chromium() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(server.url)
        page.get_by_text("Train a new subject").click()
        page.get_by_label("Name").fill("Rex")
        page.get_by_label("What is it?").fill("dog")
        page.set_input_files("#train-files", photos)

        page.locator("#train-thumbs .badge").nth(4).wait_for()
        verdicts = page.eval_on_selector_all("#train-thumbs figure", "fs => fs.map((f) => f.dataset.verdict)")
        assert verdicts == ["ok", "ok", "drop", "ok", "warn"]
        assert "copy of photo 1" in (page.locator("#train-thumbs figure").nth(2).get_attribute("title") or "")
        summary = page.locator("#train-check").inner_text()
        assert "1 of 5 photos is" in summary and "1 is a copy of another — 4 photos will be used." in summary
        screenshot(page, "playground-photo-check")
        assert count(settings, Job) == 0 and count(settings, Photo) == 0, "nothing queued before Train"

        page.get_by_role("button", name="Train anyway", exact=True).click()
        card = page.locator(".job").first
        card.wait_for()
        assert "Training Rex" in card.inner_text()
        strip = card.locator("img.preview")  # the crops training will learn from
        strip.wait_for()
        width = page.evaluate("(img) => img.naturalWidth", strip.element_handle())
        assert width == 4 * 96  # one tile per kept photo
        screenshot(page, "playground-photo-check-queued")
    with session_scope(settings) as s:
        (subject,) = s.scalars(select(Subject))
        assert len(subject.photos) == 4
