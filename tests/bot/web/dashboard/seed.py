"""Test data for the dashboard: a seeded database, a checksum of it, logging in via the form."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import MetaData, Table, inspect, select, text, update

from core.db import get_engine, session_scope
from core.dbclock import db_now
from core.models import (
    Conversation,
    Image,
    Job,
    LLMUsage,
    Photo,
    Subject,
    User,
    Worker,
    job_subjects,
)
from core.settings import Settings
from core.storage import storage_from_settings

ADMIN, PASSWORD = "root", "correct horse battery"
SECRET_TOKEN = "interaction-token-SECRET-123"


@dataclass
class Seeded:
    users: list[int]
    subject: int
    jobs: dict[str, int]  # status -> one job id in that status
    image: int
    photo: int


def png_bytes(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def seed(settings: Settings) -> Seeded:
    """People, a subject with a photo and weights, jobs in every state, an image, LLM use, a worker."""
    storage = storage_from_settings(settings)
    with session_scope(settings) as session:
        ann = User(platform="discord", platform_user_id="111", display_name="Ann")
        bob = User(platform="slack", platform_user_id="U222", display_name="Bob")
        session.add_all([ann, bob])
        session.flush()
        conv = Conversation(
            platform="discord", channel_id="c1", user_id=ann.id, interaction_token=SECRET_TOKEN
        )
        subject = Subject(
            owner_id=ann.id,
            name="rex",
            token="zwx",
            class_noun="dog",
            base_model="tiny",
            status="ready",
            artifact_key="subjects/1/lora.safetensors",
        )
        session.add_all([conv, subject])
        session.flush()
        subject.artifact_key = f"subjects/{subject.id}/lora.safetensors"
        photo = Photo(
            subject_id=subject.id,
            storage_key=f"subjects/{subject.id}/photos/1.png",
            sha256="0" * 64,
            bytes=10,
            width=8,
            height=8,
        )
        session.add(photo)
        jobs: dict[str, Job] = {}
        plan = [
            ("queued", "sample", ann),
            ("queued", "train", bob),
            ("running", "sample", ann),
            ("succeeded", "sample", ann),
            ("succeeded", "train", ann),
            ("failed", "sample", bob),
            ("cancelled", "sample", bob),
        ]
        for status, kind, owner in plan:
            job = Job(
                kind=kind,
                queue=settings.queue_name(kind),
                owner_id=owner.id,
                status=status,
                params={"prompt": "a photo of zwx dog on the moon", "n": 1},
                progress={"step": 3} if status == "running" else {},
                error="CUDA out of memory" if status == "failed" else None,
                conversation_id=conv.id,
                attempt=1 if status != "queued" else 0,
                worker="sample@host" if status == "running" else None,
            )
            session.add(job)
            session.flush()
            if status in ("succeeded", "failed", "cancelled"):
                session.execute(
                    update(Job)
                    .where(Job.id == job.id)
                    .values(started_at=db_now(-120), finished_at=db_now(-60))
                )
            if kind == "sample":
                session.execute(job_subjects.insert().values(job_id=job.id, subject_id=subject.id))
                job.subject_id = subject.id
            jobs.setdefault(status, job)
        image = Image(
            job_id=jobs["succeeded"].id,
            storage_key=f"images/{jobs['succeeded'].id}/0.png",
            seed=42,
            prompt="a photo of zwx dog on the moon",
            width=8,
            height=8,
        )
        session.add(image)
        session.add_all(
            [
                LLMUsage(
                    user_id=ann.id, model="gemma", prompt_tokens=100, completion_tokens=20, cost_usd=0.01
                ),
                LLMUsage(
                    user_id=bob.id, model="gemma", prompt_tokens=50, completion_tokens=5, cost_usd=0.002
                ),
                Worker(
                    name="sample@host",
                    hostname="host",
                    queues=settings.queue_name("sample"),
                    info={"cuda_devices": [{"name": "NVIDIA H100", "total_gb": 80.0}]},
                ),
            ]
        )
        session.flush()
        result = Seeded(
            users=[ann.id, bob.id],
            subject=subject.id,
            jobs={k: v.id for k, v in jobs.items()},
            image=image.id,
            photo=photo.id,
        )
        artifact = subject.artifact_key
    storage.put(f"subjects/{result.subject}/photos/1.png", png_bytes())
    storage.put(artifact, b"weights")
    storage.put(f"images/{result.jobs['succeeded']}/0.png", png_bytes((20, 20, 200)))
    return result


def database_checksum(settings: Settings) -> str:
    """A hash of every table's name, columns and rows, to prove nothing changed."""
    engine = get_engine(settings)
    digest = hashlib.sha256()
    with engine.connect() as conn:
        names = sorted(inspect(conn).get_table_names())
        digest.update(repr(names).encode())
        meta = MetaData()
        for name in names:
            table = Table(name, meta, autoload_with=conn)
            digest.update(repr([c.name for c in table.columns]).encode())
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(select(table).order_by(*order)).all()
            digest.update(repr(rows).encode())
        if engine.dialect.name == "sqlite":
            digest.update(repr(conn.execute(text("PRAGMA writable_schema")).all()).encode())
    return digest.hexdigest()


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: TestClient, username: str = ADMIN, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_from(client.get("/admin/").text)
