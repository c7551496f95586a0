"""Subjects through their actions: listing, an admin's delete, and forgetting with its token."""

from __future__ import annotations

import pytest

from core.actions import forgetting, images, jobs, subjects
from core.db import session_scope
from core.errors import NotFound, UserFacingError
from core.models import Subject
from tests.core.actions.conftest import People, add_subject


def test_list_subjects_shows_only_the_persons_own(people_world: People) -> None:
    settings = people_world.settings
    rex = add_subject(settings, people_world.alice, "Rex", "zwx")
    add_subject(settings, people_world.mallory, "Fido", "sks")
    pending = add_subject(settings, people_world.alice, "Bo", "sks", trained=False)
    mine = subjects.list_subjects(people_world.actor(people_world.alice))
    assert [(s.id, s.name, s.trained, s.status) for s in mine] == [
        (rex, "Rex", True, "ready"),
        (pending, "Bo", False, "pending"),
    ]


def test_an_admin_cannot_delete_a_subject_in_use(people_world: People) -> None:
    settings = people_world.settings
    rex = add_subject(settings, people_world.alice, "Rex", "zwx")
    alice = people_world.actor(people_world.alice)
    job = images.generate(alice, images.Generate(prompt="Rex", subject_ids=[rex])).job_id
    with pytest.raises(subjects.SubjectInUse, match="1 job"):
        subjects.delete(settings, rex)
    jobs.cancel(alice, job)
    deleted = subjects.delete(settings, rex)
    assert (deleted.name, deleted.owner_id) == ("Rex", people_world.alice)
    with pytest.raises(NotFound):
        subjects.delete(settings, rex)


def test_forget_asks_then_only_its_person_can_confirm(people_world: People) -> None:
    settings = people_world.settings
    add_subject(settings, people_world.alice, "Rex", "zwx")
    alice, mallory = people_world.actor(people_world.alice), people_world.actor(people_world.mallory)
    asked = forgetting.ask(alice, "rex")
    assert asked.text.startswith("This permanently deletes “rex”: 1 subject")
    with pytest.raises(UserFacingError, match="isn't yours"):
        forgetting.confirm(mallory, asked.token, "web")
    with pytest.raises(UserFacingError, match="expired"):
        forgetting.read_forget_token(settings, people_world.alice, asked.token, now=4e9)
    done = forgetting.confirm(alice, asked.token, "web")
    assert done.text.startswith("Done: I deleted that subject") and not done.plan.everything
    with session_scope(settings) as s:
        assert s.query(Subject).count() == 0
    with pytest.raises(NotFound, match="no subject called"):
        forgetting.forget_now(alice, "rex", "web")
