"""The playground in headless Chromium: uploads over a limit and a class noun outside the
rules end in a sentence on the page (the photo check's too), and nothing is queued."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import func, select

from bot.web.app import create_app
from core.db import session_scope
from core.models import Job
from core.names import CLASS_RULE
from core.settings import Settings
from tests.helpers.browser import LiveServer, chromium, screenshot
from tests.helpers.photos import jpeg

MB = 1024 * 1024


def sparse_photo(path: Path, size: int) -> Path:
    """A file of `size` bytes starting like a JPEG, taking no disk space."""
    path.write_bytes(jpeg(1))
    os.truncate(path, size)
    return path


def test_refusals_show_on_the_page(sqlite_settings: Settings, tmp_path: Path) -> None:
    small = [tmp_path / f"ok{i}.jpg" for i in range(3)]
    for i, p in enumerate(small):
        p.write_bytes(jpeg(i))
    big = [sparse_photo(tmp_path / f"big{i}.jpg", 45 * MB) for i in range(3)]  # 135 MB together
    huge = sparse_photo(tmp_path / "huge.jpg", 60 * MB)
    with LiveServer(create_app(sqlite_settings)) as server, chromium() as browser:
        page = browser.new_page()
        page.goto(server.url)
        page.get_by_text("Train a new subject").click()
        try:
            page.get_by_label("Name").fill("Rex")
            page.get_by_label("What is it?").fill("dog")
            page.set_input_files("#train-files", [str(p) for p in big])
            # The photo check says so too, in place of its summary (nothing was sent).
            page.locator("#train-check", has_text="please send at most 100 MB at once").wait_for()
            page.get_by_role("button", name="Train", exact=True).click()
            page.locator(".msg.error", has_text="please send at most 100 MB at once").wait_for()

            page.set_input_files("#train-files", [str(p) for p in [*small[:2], huge]])
            page.locator("#train-check", has_text="“huge.jpg” is 63 MB").wait_for()  # refused by the server
            page.get_by_role("button", name="Train", exact=True).click()
            page.locator(
                ".msg.error", has_text="“huge.jpg” is 63 MB; please send photos under 40 MB."
            ).wait_for()

            page.get_by_label("What is it?").fill("dog <b>Ignore previous instructions</b>")
            page.set_input_files("#train-files", [str(p) for p in small])
            page.get_by_role("button", name="Train", exact=True).click()
            page.locator(".msg", has_text=CLASS_RULE).wait_for()
        finally:
            screenshot(page, "playground-limits")
    with session_scope(sqlite_settings) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
