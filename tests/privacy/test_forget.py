"""/forget: afterwards no row and no stored file of the person remains, nobody else loses
anything, and the audit log has the deletion (what and when, never the content)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.chat.delivery import Delivery, OutMessage, Target
from bot.chat.service import ConversationService
from bot.web.app import create_app
from bot.web.dashboard.auth import create_admin
from core.db import session_scope
from core.models import AuditLog, Base, Conversation, Image, Job, OutboxItem, Subject, User
from core.settings import Settings
from tests.bot.web.dashboard.seed import csrf_from
from tests.helpers.fake_llm import FakeLLM
from tests.privacy.conftest import finish_sample, finish_training, photos, speaker, with_llm

# Words only Alice's data contains: none may be left anywhere in the database.
ALICE_MARKERS = ("U-alice", "Alice Quixote", "Quillon", "quokkamarker", "xylomarker")


class RecordingPoster:
    """A platform that accepts every post (delivery writes its outbox rows)."""

    def __init__(self) -> None:
        self.posts: list[OutMessage] = []

    async def post(self, target: Target, message: OutMessage, nonce: str) -> str:
        self.posts.append(message)
        return f"m{len(self.posts)}"

    async def edit(self, target: Target, message_id: str, message: OutMessage) -> None:
        return None

    async def find(self, target: Target, nonce: str, message: OutMessage) -> str | None:
        return None


def all_rows(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, found through the models' metadata (nothing listed by hand)."""
    with session_scope(settings) as s:
        return {t.name: [dict(r._mapping) for r in s.execute(select(t))] for t in Base.metadata.sorted_tables}


def stored_files(settings: Settings) -> dict[str, bytes]:
    root = settings.data_dir / "storage"
    out = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".tmp"]
        for name in names:
            path = Path(folder, name)
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def references(rows: dict[str, list[dict[str, Any]]], ids: dict[str, set[int]]) -> list[str]:
    """Every (table, column, value) that points at one of `ids` (by primary or foreign key)."""
    found = []
    for table in Base.metadata.sorted_tables:
        for row in rows[table.name]:
            for column in table.columns:
                value = row[column.name]
                targets = [fk.column.table.name for fk in column.foreign_keys]
                if column.primary_key and len(table.primary_key.columns) == 1:
                    targets.append(table.name)
                if any(value in ids.get(t, set()) for t in targets):
                    found.append(f"{table.name}.{column.name}={value}")
    return found


def mentions(rows: dict[str, list[dict[str, Any]]], markers: tuple[str, ...]) -> list[str]:
    return [
        f"{table}: {row}"
        for table, table_rows in rows.items()
        for row in table_rows
        if any(m in repr(row) for m in markers)
    ]


async def person_uses_everything(
    settings: Settings, fake: FakeLLM, user: str, name: str, subject: str, cls: str, words: str, n: int
) -> dict[str, set[int]]:
    """Train, generate, chat (with a photo) and get results posted; returns the ids made."""
    service = ConversationService(settings)
    thread = f"T-{n}"
    trained = await service.train(
        speaker(user, f"e{n}1", thread=thread, name=name),
        subject,
        cls,
        photos(3, n),
        consent=True,
        confirmed=True,
    )
    assert trained.job_ids, trained.text
    subject_id = finish_training(settings, trained.job_ids[0])
    made = await service.imagine(speaker(user, f"e{n}2", thread=thread, name=name), f"{subject} {words}", 2)
    assert made.job_ids, made.text
    image_ids = finish_sample(settings, made.job_ids[0])
    fake.say(f"Lovely photo! {words}")
    chat = await service.chat(
        speaker(user, f"e{n}3", thread=thread, name=name), f"{words} hi", photos(1, 50 + n)
    )
    assert chat.recorded and words in chat.text
    with session_scope(settings) as s:
        uid = s.scalar(select(User.id).where(User.platform_user_id == user))
        conv = s.scalar(select(Conversation.id).where(Conversation.thread_id == thread))
    assert uid is not None and conv is not None
    return {
        "users": {uid},
        "subjects": {subject_id},
        "jobs": {*trained.job_ids, *made.job_ids},
        "images": set(image_ids),
        "conversations": {conv},
    }


async def test_forget_everything_leaves_nothing_of_the_person(
    db_settings: Settings, fake_llm: FakeLLM
) -> None:
    settings = with_llm(db_settings, fake_llm)
    service = ConversationService(settings)
    alice = await person_uses_everything(
        settings, fake_llm, "U-alice", "Alice Quixote", "Quillon", "woman", "quokkamarker xylomarker", 1
    )
    bob = await person_uses_everything(settings, fake_llm, "U-bob", "Bob", "Rex", "dog", "bobword", 2)
    # Bob speaks in Alice's thread too (that conversation is shared: it stays, for Bob).
    fake_llm.say("Hello Bob")
    await service.chat(speaker("U-bob", "e-b-in-a", thread="T-1"), "bob here", [])
    # They report one of each other's pictures.
    bob_image, alice_image = min(bob["images"]), min(alice["images"])
    assert (await service.press(speaker("U-alice", "r1", thread="T-1"), f"db:x:{bob_image}")).delete_job_id
    assert (await service.press(speaker("U-bob", "r2", thread="T-2"), f"db:x:{alice_image}")).delete_job_id
    poster = RecordingPoster()
    await Delivery(settings, {"slack": poster}).pass_once()
    assert poster.posts  # job cards and images were posted: outbox rows exist for both
    with session_scope(settings) as s:
        assert s.scalar(select(OutboxItem.id).where(OutboxItem.job_id.in_(alice["jobs"]))) is not None

    rows_before, files_before = all_rows(settings), stored_files(settings)
    assert mentions(rows_before, ALICE_MARKERS) and references(rows_before, alice)
    bob_files = {
        k: v
        for k, v in files_before.items()
        if k.startswith(tuple(f"subjects/{i}/" for i in bob["subjects"]))
        or k.startswith(tuple(f"jobs/{i}/" for i in bob["jobs"]))
        or k.startswith(tuple(f"conversations/{i}/" for i in bob["conversations"]))
    }
    assert len(bob_files) >= 4  # photos, checkpoint, weights, images, chat photo
    shared_conv = next(iter(alice["conversations"]))
    bob_in_alices_thread = [
        f for f in files_before if f.startswith(f"conversations/{shared_conv}/")
    ]  # Alice's chat photo lives there

    ask = await service.forget(speaker("U-alice", "f1", thread="T-1"))
    assert "permanently deletes everything" in ask.text and "1 subject" in ask.text and ask.buttons
    assert all_rows(settings)["subjects"] == rows_before["subjects"]  # asking deletes nothing
    done = await service.press(speaker("U-alice", "f2", thread="T-1"), ask.buttons[0].custom_id)
    assert done.text.startswith("Done"), done.text

    rows, files = all_rows(settings), stored_files(settings)
    forget_audit = [r for r in rows["audit_log"] if r["action"] == "forget.person"]
    assert len(forget_audit) == 1
    entry = forget_audit[0]
    assert entry["target"] == f"user:{min(alice['users'])}" and entry["actor"] == "self (slack)"
    assert entry["details"]["subjects"] == 1 and entry["details"]["images"] == 2
    assert entry["created_at"] is not None
    rows["audit_log"] = [r for r in rows["audit_log"] if r["action"] != "forget.person"]
    # Alice's conversation stays only because Bob spoke in it: it no longer points at her.
    alice_refs = {**alice, "conversations": set()}
    assert references(rows, alice_refs) == []
    assert mentions(rows, ALICE_MARKERS) == []
    assert rows["conversations"] and all(c["user_id"] != min(alice["users"]) for c in rows["conversations"])
    # No file of hers anywhere; every one of Bob's is still there, byte for byte.
    assert files == bob_files, sorted(set(files) ^ set(bob_files))
    assert not any(f in files for f in bob_in_alices_thread)

    # Bob's rows are untouched (only the report Alice made is now anonymous).
    def bobs(rs: dict[str, list[dict[str, Any]]], table: str, key: str, ids: set[int]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "reported_by"} for r in rs[table] if r[key] in ids]

    for table, key, ids in [
        ("users", "id", bob["users"]),
        ("subjects", "id", bob["subjects"]),
        ("jobs", "id", bob["jobs"]),
        ("images", "id", bob["images"]),
        ("photos", "subject_id", bob["subjects"]),
        ("conversation_messages", "user_id", bob["users"]),
        ("llm_usage", "user_id", bob["users"]),
    ]:
        assert bobs(rows, table, key, ids) == bobs(rows_before, table, key, ids), table
    bob_image_row = next(r for r in rows["images"] if r["id"] == bob_image)
    assert bob_image_row["reported_by"] is None and bob_image_row["review"] == "pending"

    gone = await service.forget(speaker("U-alice", "f3", thread="T-1"))
    assert "nothing stored about you" in gone.text  # and asking created no new row
    assert all_rows(settings)["users"] == rows["users"]


async def test_forget_one_subject_keeps_the_rest(sqlite_settings: Settings, fake_llm: FakeLLM) -> None:
    settings = with_llm(sqlite_settings, fake_llm)
    service = ConversationService(settings)
    me = speaker("U-carol", "t1")
    first = await service.train(me, "Mug", "mug", photos(3))
    second = await service.train(speaker("U-carol", "t2"), "Rex", "dog", photos(3, 10))
    mug, rex = finish_training(settings, first.job_ids[0]), finish_training(settings, second.job_ids[0])
    sample = await service.imagine(speaker("U-carol", "i1"), "Mug on a table", 1)
    finish_sample(settings, sample.job_ids[0], 1)

    unknown = await service.forget(speaker("U-carol", "f0"), "Nope")
    assert "no subject called “Nope”" in unknown.text and "“Mug”" in unknown.text
    done = await service.forget(speaker("U-carol", "f1"), "mug", confirm=True)
    assert done.text.startswith("Done"), done.text
    with session_scope(settings) as s:
        assert s.get(Subject, mug) is None and s.get(Subject, rex) is not None
        assert s.get(Job, sample.job_ids[0]) is None and s.get(Job, second.job_ids[0]) is not None
        assert s.scalar(select(Image.id)) is None
        audit = s.scalars(select(AuditLog).where(AuditLog.action == "forget.subject")).one()
        assert audit.target == f"subject:{mug}" and "Mug" not in repr(audit.details)
    files = stored_files(settings)
    assert not any(k.startswith((f"subjects/{mug}/", f"jobs/{sample.job_ids[0]}/")) for k in files)
    assert f"subjects/{rex}/lora.safetensors" in files


async def test_forget_button_works_only_for_its_person(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    await service.train(speaker("U-dan", "t1"), "Mug", "mug", photos(3))
    await service.train(speaker("U-eve", "t2"), "Cup", "cup", photos(3, 5))
    ask = await service.forget(speaker("U-dan", "f1"))
    stolen = await service.press(speaker("U-eve", "f2"), ask.buttons[0].custom_id)
    assert "isn't yours" in stolen.text
    broken = await service.press(speaker("U-dan", "f3"), "db:f:1.2.3")
    assert "confirm" in broken.text.lower() or "broken" in broken.text
    with session_scope(sqlite_settings) as s:
        assert len(list(s.scalars(select(Subject.id)))) == 2  # nothing was deleted
    again = await service.press(speaker("U-dan", "f4"), ask.buttons[0].custom_id)
    repeat = await service.press(speaker("U-dan", "f4"), ask.buttons[0].custom_id)
    assert again.text.startswith("Done") and repeat.duplicate


async def test_an_admin_forgets_a_person_from_their_page(sqlite_settings: Settings) -> None:
    service = ConversationService(sqlite_settings)
    trained = await service.train(speaker("U-gone", "t1"), "Mug", "mug", photos(3))
    finish_training(sqlite_settings, trained.job_ids[0])
    with session_scope(sqlite_settings) as s:
        user_id = s.scalars(select(User.id)).one()
    create_admin(sqlite_settings, "root", "correct horse battery staple")
    with TestClient(create_app(sqlite_settings), base_url="http://testserver") as client:
        page = client.get("/admin/login")
        client.post(
            "/admin/login",
            data={
                "username": "root",
                "password": "correct horse battery staple",
                "csrf_token": csrf_from(page.text),
            },
        )
        person = client.get(f"/admin/people/{user_id}").text
        assert "Forget this person" in person
        token = csrf_from(person)
        unconfirmed = client.post(f"/admin/people/{user_id}/forget", data={"csrf_token": token})
        assert "Type forget" in unconfirmed.text
        assert client.post(f"/admin/people/{user_id}/forget", data={"confirm": "forget"}).status_code == 403
        done = client.post(f"/admin/people/{user_id}/forget", data={"csrf_token": token, "confirm": "forget"})
        assert done.status_code == 200 and f"Forgot person #{user_id}" in done.text
        assert client.get(f"/admin/people/{user_id}").status_code == 404
    rows = all_rows(sqlite_settings)
    assert rows["users"] == [] and rows["subjects"] == [] and rows["photos"] == [] and rows["jobs"] == []
    assert [
        (a["actor"], a["action"], a["target"]) for a in rows["audit_log"] if a["action"].startswith("forget")
    ] == [("root", "forget.person", f"user:{user_id}")]
    assert not any(k.startswith(("subjects/", "jobs/")) for k in stored_files(sqlite_settings))
