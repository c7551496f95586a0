"""Report: the image is hidden for everyone at once, the chat message goes, the admins'
queue shows it; delete, dismiss and block are audited and do what they say."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeSerializer
from sqlalchemy import select

from agent.tool_args import ImageArgs
from agent.tools import ToolContext, ToolError, upscale_image
from bot.chat.cards import MAX_BUTTONS, image_buttons, parse_button_id
from bot.chat.delivery import Delivery
from bot.chat.service import ConversationService, Origin
from bot.web.app import create_app
from bot.web.dashboard.auth import create_admin
from bot.web.playground import timeline
from core.db import session_scope
from core.models import AuditLog, Image, User
from core.settings import Settings
from core.storage import storage_from_settings
from tests.bot.web.dashboard.seed import csrf_from
from tests.privacy.conftest import finish_sample, finish_training, photos, speaker
from tests.privacy.test_forget import RecordingPoster

ADMIN, PASSWORD = "root", "correct horse battery staple"


def test_every_image_gets_a_report_button_within_the_platform_limit() -> None:
    two = image_buttons(7, [11, 12])
    assert [b.custom_id for b in two if b.custom_id.startswith("db:x:")] == ["db:x:11", "db:x:12"]
    assert parse_button_id("db:x:11") == ("report", 11)
    for n in range(1, 9):
        buttons = image_buttons(1, list(range(100, 100 + n)))
        assert len(buttons) <= MAX_BUTTONS
        assert any(b.custom_id.startswith("db:x:") for b in buttons)


@pytest.fixture
def admin_client(sqlite_settings: Settings) -> Iterator[TestClient]:
    create_admin(sqlite_settings, ADMIN, PASSWORD)
    with TestClient(create_app(sqlite_settings), base_url="http://testserver") as client:
        page = client.get("/admin/login")
        client.post(
            "/admin/login",
            data={"username": ADMIN, "password": PASSWORD, "csrf_token": csrf_from(page.text)},
            follow_redirects=False,
        )
        yield client


async def made_images(settings: Settings, user: str = "U-maker", n: int = 2) -> tuple[int, list[int]]:
    service = ConversationService(settings)
    trained = await service.train(speaker(user, f"{user}-t"), "Mug", "mug", photos(3))
    finish_training(settings, trained.job_ids[0])
    sample = await service.imagine(speaker(user, f"{user}-i"), "Mug on the moon", n)
    return sample.job_ids[0], finish_sample(settings, sample.job_ids[0], n)


def audit(settings: Settings) -> list[tuple[str, str]]:
    with session_scope(settings) as s:
        return [(a.action, a.target) for a in s.scalars(select(AuditLog).order_by(AuditLog.id))]


async def test_report_hides_everywhere_and_queues_for_admins(
    sqlite_settings: Settings, admin_client: TestClient
) -> None:
    settings = sqlite_settings
    service = ConversationService(settings)
    job_id, (bad, fine) = await made_images(settings)
    assert f"/admin/files/image/{bad}" in admin_client.get("/admin/images").text

    reply = await service.press(speaker("U-witness", "x1"), f"db:x:{bad}")
    assert reply.delete_job_id == job_id and "hidden" in reply.text  # the adapter deletes the message
    with session_scope(settings) as s:
        image = s.get(Image, bad)
        assert image is not None and image.hidden_at is not None and image.review == "pending"
        reporter = s.scalar(select(User.id).where(User.platform_user_id == "U-witness"))
        assert image.reported_by == reporter
    gallery = admin_client.get("/admin/images").text
    assert f"/admin/files/image/{bad}" not in gallery and f"/admin/files/image/{fine}" in gallery
    queue = admin_client.get("/admin/reports").text
    assert f'data-image="{bad}"' in queue and f'data-image="{fine}"' not in queue
    assert admin_client.get(f"/admin/files/image/{bad}").status_code == 200  # admins can still look
    # The owner's tools no longer offer it, and delivery does not post it.
    with pytest.raises(ToolError, match="reported"):
        upscale_image(ToolContext(settings, _owner(settings), None, None), ImageArgs(image_id=bad))
    poster = RecordingPoster()
    await Delivery(settings, {"slack": poster}).pass_once()
    posted = [m for m in poster.posts if m.files]
    assert len(posted) == 1 and len(posted[0].files) == 1
    assert f"db:x:{fine}" in [b.custom_id for b in posted[0].buttons]
    again = await service.press(speaker("U-other", "x2"), f"db:x:{bad}")
    assert "already hidden" in again.text

    # Dismiss: visible again and no longer reportable.
    token = csrf_from(queue)
    assert admin_client.post(f"/admin/reports/{bad}/dismiss", data={}).status_code == 403  # no CSRF token
    response = admin_client.post(
        f"/admin/reports/{bad}/dismiss", data={"csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    assert f"/admin/files/image/{bad}" in admin_client.get("/admin/images").text
    later = await service.press(speaker("U-witness", "x3"), f"db:x:{bad}")
    assert "already reviewed" in later.text and later.delete_job_id is None
    assert ("report.dismiss", f"image:{bad}") in audit(settings)


def _owner(settings: Settings) -> int:
    with session_scope(settings) as s:
        return s.scalars(select(User.id).where(User.platform_user_id == "U-maker")).one()


def test_the_queue_needs_an_admin(sqlite_settings: Settings) -> None:
    with TestClient(create_app(sqlite_settings), base_url="http://testserver") as anonymous:
        for method, path in [("GET", "/admin/reports"), ("POST", "/admin/reports/1/delete"),
                             ("POST", "/admin/reports/1/dismiss"), ("POST", "/admin/reports/1/block"),
                             ("POST", "/admin/people/1/forget")]:  # fmt: skip
            response = anonymous.request(method, path, follow_redirects=False)
            assert response.status_code == 303 and "/admin/login" in response.headers["location"]


async def test_delete_and_block_from_the_queue(sqlite_settings: Settings, admin_client: TestClient) -> None:
    settings = sqlite_settings
    service = ConversationService(settings)
    _, (first, second) = await made_images(settings)
    await service.press(speaker("U-witness", "x1"), f"db:x:{first}")
    await service.press(speaker("U-witness", "x2"), f"db:x:{second}")
    token = csrf_from(admin_client.get("/admin/reports").text)

    admin_client.post(f"/admin/reports/{first}/delete", data={"csrf_token": token})
    admin_client.post(f"/admin/reports/{second}/block", data={"csrf_token": token})
    storage = storage_from_settings(settings)
    with session_scope(settings) as s:
        assert s.scalar(select(Image.id)) is None
        maker = s.scalars(select(User).where(User.platform_user_id == "U-maker")).one()
        assert maker.is_blocked
    assert not any(storage.list("jobs/"))
    assert audit(settings)[-2:] == [("report.delete", f"image:{first}"), ("report.block", f"image:{second}")]
    assert "nothing reported" in admin_client.get("/admin/reports").text
    refused = await service.imagine(speaker("U-maker", "i9"), "Mug again", 1)
    assert "can't use dreambot" in refused.text and refused.job_ids == []


async def test_a_big_message_is_reported_as_a_whole(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    job_id, image_ids = await made_images(sqlite_settings, n=8)
    report = [b for b in image_buttons(job_id, image_ids) if b.custom_id.startswith("db:x:")]
    assert len(report) == 1
    await service.press(speaker("U-witness", "x1"), report[0].custom_id)
    with session_scope(sqlite_settings) as s:
        assert all(i.hidden_at is not None for i in s.scalars(select(Image)))


async def test_the_playground_hides_reported_images(sqlite_settings: Settings) -> None:
    browser = TestClient(create_app(sqlite_settings))
    browser.get("/")
    cookie = browser.cookies["dreambot_web"]
    who = str(URLSafeSerializer(sqlite_settings.session_secret_value(), salt="playground").loads(cookie))
    service = ConversationService(sqlite_settings)

    def me(event: str) -> Origin:
        return Origin("web", who, "web visitor", channel_id=who, event_id=event)

    trained = await service.train(me("t"), "Mug", "mug", photos(3))
    finish_training(sqlite_settings, trained.job_ids[0])
    sample = await service.imagine(me("i"), "Mug", 2)
    bad, fine = finish_sample(sqlite_settings, sample.job_ids[0], 2)
    await service.press(me("x"), f"db:x:{bad}")
    items = [i for i in timeline(sqlite_settings, who)["items"] if i["type"] == "job" and i["images"]]
    assert items[0]["images"] == [f"/api/images/{fine}"]
    assert browser.get(f"/api/images/{bad}").status_code == 404
    assert browser.get(f"/api/images/{fine}").status_code == 200
