"""Consent: photos of a person are not queued without the uploader's confirmation; with it
they are, and who confirmed what, and when, is stored with the subject."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from agent.memory import save_message, save_photos
from agent.toolcalls import ToolCall
from agent.tools import TOOLS, ToolContext, run_tool
from bot.chat.service import ConversationService, Upload
from bot.cli.main import app
from bot.web.app import create_app
from core.db import session_scope
from core.models import Conversation, Job, Subject, User
from core.settings import Settings
from core.storage import storage_from_settings
from core.subjects import CONSENT_TEXT, kind_of
from tests.helpers.photos import face_jpeg, jpeg
from tests.helpers.profile import settings_env
from tests.privacy.conftest import photos, speaker


def faces(n: int) -> list[Upload]:
    """Photos of one person each (the photo coach finds one face in every one)."""
    return [Upload(f"p{i}.jpg", face_jpeg(i)) for i in range(n)]


def count(settings: Settings, model: type) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


PERSON_PHRASES = ["young woman", "my dad", "me and my sister"]


@pytest.mark.parametrize("noun", ["woman", "Man", "person", "me", "daughter", *PERSON_PHRASES, "grandmas"])
def test_person_nouns(noun: str) -> None:
    assert kind_of(noun) == "person"


@pytest.mark.parametrize("phrase", PERSON_PHRASES)
async def test_a_phrase_naming_a_person_asks_for_consent_everywhere(
    sqlite_settings: Settings, tmp_path: Path, phrase: str
) -> None:
    """The chat commands (the service behind Discord and Slack), the playground form, the
    agent's tool and the CLI: each asks, and nothing is queued."""
    service = await ConversationService(sqlite_settings).train(speaker("U1", "e1"), "Ann", phrase, photos(3))
    assert service.needs_consent and "I need your confirmation" in service.text

    browser = TestClient(create_app(sqlite_settings))
    browser.get("/")
    files = [("files", (f"a{i}.jpg", jpeg(i), "image/jpeg")) for i in range(3)]
    form = browser.post("/api/train", data={"name": "Ann", "class_noun": phrase}, files=files).json()
    assert form["needs_consent"] is True

    user_id, conv_id = web_person_with_photos(sqlite_settings, "w9")
    ctx = ToolContext(sqlite_settings, user_id, conv_id, "web:ev1")
    tool = run_tool(ctx, ToolCall("train_subject", {"name": "Ann", "class_noun": phrase}))
    assert "I need your confirmation" in tool.output["error"]

    paths = []
    for i in range(3):
        (path := tmp_path / f"ann{i}.jpg").write_bytes(jpeg(i))
        paths.append(str(path))
    args = ["train", *paths, "--name", "Ann", "--class", phrase]
    cli = CliRunner().invoke(app, args, env=settings_env(sqlite_settings))
    assert cli.exit_code == 1 and "again with --consent" in cli.output
    assert count(sqlite_settings, Job) == 0 and count(sqlite_settings, Subject) == 0


def web_person_with_photos(settings: Settings, who: str) -> tuple[int, int]:
    """A playground person whose conversation holds a message with three photos of one face
    each (nothing for the photo coach to ask about): (user, conversation)."""
    with session_scope(settings) as s:
        user = User(platform="web", platform_user_id=who, display_name=who)
        s.add(user)
        s.flush()
        conv = Conversation(platform="web", channel_id=who, thread_id="", user_id=user.id)
        s.add(conv)
        s.flush()
        user_id, conv_id = user.id, conv.id
    msg = save_message(settings, conversation_id=conv_id, user_id=user_id, role="user", content="me")
    save_photos(storage_from_settings(settings), conv_id, msg, [face_jpeg(i) for i in range(3)])
    return user_id, conv_id


async def test_a_person_needs_consent_and_it_is_recorded(db_settings: Settings) -> None:
    service = ConversationService(db_settings)
    refused = await service.train(speaker("U1", "e1"), "Ada", "woman", faces(3))
    assert refused.needs_consent and refused.job_ids == [] and "confirm" in refused.text
    assert count(db_settings, Subject) == 0 and count(db_settings, Job) == 0
    assert list((db_settings.data_dir / "storage").glob("subjects/**/*")) == []

    pet = await service.train(speaker("U1", "e2"), "Rex", "dog", photos(3, 5))  # not a person
    assert pet.job_ids and not pet.needs_consent

    given = await service.train(speaker("U1", "e3"), "Ada", "woman", faces(3), consent=True)
    assert len(given.job_ids) == 1 and not given.needs_consent
    with session_scope(db_settings) as s:
        ada = s.scalars(select(Subject).where(Subject.name == "Ada")).one()
        rex = s.scalars(select(Subject).where(Subject.name == "Rex")).one()
        job = s.get(Job, given.job_ids[0])
        assert job is not None and job.status == "queued" and job.subject_id == ada.id
        assert ada.consent_at is not None and ada.consent_by == "slack:U1"
        assert ada.consent_text == CONSENT_TEXT and not ada.keep_photos
        assert rex.consent_at is None


async def test_the_agent_passes_consent_only_when_confirmed(sqlite_settings: Settings) -> None:
    spec = TOOLS["train_subject"].spec()["parameters"]["properties"]["consent_confirmed"]
    assert "only true if the person explicitly confirmed" in spec["description"]
    user_id, conv_id = web_person_with_photos(sqlite_settings, "w1")
    ctx = ToolContext(sqlite_settings, user_id, conv_id, "web:ev1")

    args = {"name": "Me", "class_noun": "man"}
    refused = run_tool(ctx, ToolCall("train_subject", args))
    assert "confirm" in refused.output["error"] and count(sqlite_settings, Job) == 0
    sneaky = run_tool(
        ctx, ToolCall("train_subject", {"name": "Me", "class_noun": "model", "subject_kind": "person"})
    )
    assert "error" in sneaky.output and count(sqlite_settings, Job) == 0
    done = run_tool(ctx, ToolCall("train_subject", {**args, "consent_confirmed": True}))
    assert done.output["status"] == "queued", done.output
    with session_scope(sqlite_settings) as s:
        subject = s.get(Subject, done.output["subject_id"])
        assert subject is not None and subject.consent_by == "web:w1"


def test_the_playground_form_has_the_checkbox(sqlite_settings: Settings) -> None:
    browser = TestClient(create_app(sqlite_settings))
    page = browser.get("/")
    assert 'name="consent"' in page.text and 'name="keep_photos"' in page.text
    files = [("files", (f"a{i}.jpg", face_jpeg(i), "image/jpeg")) for i in range(3)]
    refused = browser.post("/api/train", data={"name": "Ada", "class_noun": "woman"}, files=files).json()
    assert refused["job_ids"] == [] and "confirm" in refused["text"]
    data = {"name": "Ada", "class_noun": "woman", "consent": "true", "keep_photos": "true"}
    given = browser.post("/api/train", data=data, files=files).json()
    assert len(given["job_ids"]) == 1, given
    with session_scope(sqlite_settings) as s:
        ada = s.scalars(select(Subject)).one()
        assert ada.consent_at is not None and ada.keep_photos


async def test_blocked_people_get_a_polite_refusal_and_nothing_is_queued(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    await service.models(speaker("U9", ""))  # first contact creates the person
    with session_scope(sqlite_settings) as s:
        s.scalars(select(User)).one().is_blocked = True
    for reply in (
        await service.train(speaker("U9", "b1"), "Rex", "dog", photos(3)),
        await service.imagine(speaker("U9", "b2"), "a dog", 1),
    ):
        assert "can't use dreambot" in reply.text and reply.job_ids == []
    assert count(sqlite_settings, Job) == 0 and count(sqlite_settings, Subject) == 0
