"""The web playground over HTTP: a cookie per browser, train, feed, images only for their owner."""

from __future__ import annotations

from fastapi.testclient import TestClient

from bot.web.app import create_app
from bot.web.playground import replies_first
from core import jobs
from core.job_progress import JobPhase, JobProgress
from core.job_results import SampleResult
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.photos import PDF, jpeg, png


def client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def test_train_and_watch_the_card(sqlite_settings: Settings) -> None:
    browser = client(sqlite_settings)
    page = browser.get("/")
    assert page.status_code == 200 and "dreambot_web" in page.cookies
    files = [("files", (f"dog{i}.jpg", jpeg(i), "image/jpeg")) for i in range(4)]
    reply = browser.post(
        "/api/train", data={"name": "Rex", "class_noun": "dog", "event_id": "e1"}, files=files
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["job_ids"]) == 1 and not body["duplicate"]
    again = browser.post(
        "/api/train", data={"name": "Rex", "class_noun": "dog", "event_id": "e1"}, files=files
    )
    assert again.json()["duplicate"] is True  # a double click is one training
    items = browser.get("/api/feed").json()["items"]
    assert [(i["type"], i["status"]) for i in items] == [("job", "queued")]
    assert items[0]["text"] == "🧠 Training Rex — queued #1"

    lease = jobs.claim(sqlite_settings, body["job_ids"][0], "w")
    assert lease is not None
    jobs.report_progress(sqlite_settings, lease, JobProgress(step=3, total=10, phase=JobPhase.TRAINING))
    item = browser.get("/api/feed").json()["items"][0]
    assert item["percent"] == 30 and "30%" in item["text"]


def test_refusals_are_text_not_errors(sqlite_settings: Settings) -> None:
    browser = client(sqlite_settings)
    browser.get("/")
    files = [("files", ("a.jpg", jpeg(1), "image/jpeg")), ("files", ("menu.pdf", PDF, "application/pdf"))]
    reply = browser.post("/api/train", data={"name": "Rex", "class_noun": "dog"}, files=files)
    assert reply.status_code == 200 and "at least 3 photos" in reply.json()["text"]
    assert browser.get("/api/feed").json()["items"] == []


def test_images_are_private_to_their_browser(sqlite_settings: Settings) -> None:
    owner, stranger = client(sqlite_settings), client(sqlite_settings)
    owner.get("/")
    stranger.get("/")
    files = [("files", (f"m{i}.jpg", jpeg(i), "image/jpeg")) for i in range(3)]
    owner.post("/api/train", data={"name": "Mug", "class_noun": "mug"}, files=files)
    sample = owner.post("/api/imagine", data={"prompt": "a mug on the moon", "n": "1"}).json()
    assert sample.get("job_ids"), sample
    job_id = sample["job_ids"][0]
    lease = jobs.claim(sqlite_settings, job_id, "w")
    assert lease is not None
    storage_from_settings(sqlite_settings).put(f"jobs/{job_id}/0.png", png(5))
    image_id = jobs.add_image(
        sqlite_settings, lease, storage_key=f"jobs/{job_id}/0.png", seed=1, prompt="p", width=64, height=64
    )
    jobs.finish(sqlite_settings, lease, SampleResult(image_ids=[image_id]))
    done = next(i for i in owner.get("/api/feed").json()["items"] if i.get("id") == job_id)
    assert done["images"] == [f"/api/images/{image_id}"] and any(
        b["label"] == "🎲 Reroll" for b in done["buttons"]
    )
    assert owner.get(done["images"][0]).content == png(5)
    assert stranger.get(done["images"][0]).status_code == 404
    assert client(sqlite_settings).get("/api/feed").status_code == 400  # no cookie, no person


def test_off_loopback_the_playground_asks_for_a_login(sqlite_settings: Settings) -> None:
    exposed = sqlite_settings.model_copy(update={"web_host": "0.0.0.0"})
    response = client(exposed).get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/admin/login")


def test_the_page_loads_nothing_inline_and_no_foreign_scripts(sqlite_settings: Settings) -> None:
    page = client(sqlite_settings).get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text and "style=" not in page.text


def test_the_answer_comes_before_the_cards_it_started() -> None:
    def msg(role: str, at: str) -> dict[str, str]:
        return {"type": "message", "role": role, "at": at}

    train = {"type": "job", "id": 1, "at": "1"}
    question, moon, answer = msg("user", "2"), {"type": "job", "id": 2, "at": "3"}, msg("assistant", "4")
    later = msg("user", "5")
    unanswered = {"type": "job", "id": 3, "at": "6"}
    ordered = replies_first([train, question, moon, answer, later, unanswered])
    assert ordered == [train, question, answer, moon, later, unanswered]
