"""A small world for the actions: two people on a migrated SQLite database, and helpers
that leave behind what a worker would (a trained subject, a finished job with images)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.actions.actor import Actor
from core.actions.people import person
from core.db import session_scope
from core.models import Image, Job, Subject
from core.settings import Settings


@dataclass
class People:
    settings: Settings
    alice: int
    mallory: int

    def actor(self, user_id: int, event: str | None = None) -> Actor:
        return Actor(self.settings, user_id, None, event)


@pytest.fixture
def people_world(sqlite_settings: Settings) -> People:
    with session_scope(sqlite_settings) as s:
        alice = person(s, "web", "alice", "Alice").id
        mallory = person(s, "web", "mallory", "Mallory").id
    return People(sqlite_settings, alice, mallory)


def add_subject(settings: Settings, owner_id: int, name: str, token: str, *, trained: bool = True) -> int:
    with session_scope(settings) as s:
        subject = Subject(
            owner_id=owner_id,
            name=name,
            token=token,
            class_noun="dog",
            base_model=settings.base_model,
            status="ready" if trained else "pending",
            artifact_key=f"subjects/x/{token}.safetensors" if trained else None,
        )
        s.add(subject)
        s.flush()
        return subject.id


def finished_job(
    settings: Settings, owner_id: int, subject_id: int, images: int = 1
) -> tuple[int, list[int]]:
    """A succeeded sample job of `subject_id` with its images: (job id, image ids)."""
    with session_scope(settings) as s:
        job = Job(
            kind="sample",
            queue="q",
            owner_id=owner_id,
            status="succeeded",
            params={
                "prompt": "a photo of zwx dog on a beach",
                "n": images,
                "seed": 7,
                "subject_ids": [subject_id],
            },
            progress={},
            subjects=[s.get(Subject, subject_id)],
            subject_id=subject_id,
        )
        s.add(job)
        s.flush()
        rows = [
            Image(
                job_id=job.id,
                storage_key=f"jobs/{job.id}/{i}.png",
                seed=i,
                prompt="a photo of zwx dog on a beach",
                width=64,
                height=64,
            )
            for i in range(images)
        ]
        s.add_all(rows)
        s.flush()
        return job.id, [r.id for r in rows]
