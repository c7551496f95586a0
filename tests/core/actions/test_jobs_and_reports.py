"""Jobs (status, cancel, an admin's retry) and reports (a person's Report, an admin's review)."""

from __future__ import annotations

import pytest

from core.actions import images, jobs, reports
from core.actions.ownership import NotYours
from core.db import session_scope
from core.errors import NotFound, Refused
from core.models import Image, User
from tests.core.actions.conftest import People, add_subject, finished_job


def test_status_and_cancel_of_the_persons_own_jobs_only(people_world: People) -> None:
    alice, mallory = people_world.actor(people_world.alice), people_world.actor(people_world.mallory)
    job_id = images.generate(alice, images.Generate(prompt="a castle")).job_id
    assert jobs.status(alice, job_id).status == "queued"
    assert [j.id for j in jobs.recent(alice)] == [job_id] and jobs.recent(mallory) == []
    for act in (jobs.status, jobs.cancel):
        with pytest.raises(NotYours, match=f"Job #{job_id} is not one of this person's jobs"):
            act(mallory, job_id)
    assert jobs.cancel(alice, job_id) == "cancelled"
    assert jobs.cancel(alice, job_id) == "cancelled"  # its end state, again


def test_an_admin_retries_only_a_failed_or_cancelled_job(people_world: People) -> None:
    settings = people_world.settings
    job_id = images.generate(
        people_world.actor(people_world.alice), images.Generate(prompt="a castle")
    ).job_id
    with pytest.raises(jobs.NotRetryable, match=r"\(queued\)"):
        jobs.retry(settings, job_id)
    assert jobs.cancel_any(settings, job_id) == "cancelled"
    copy = jobs.retry(settings, job_id)
    assert copy != job_id and jobs.status(people_world.actor(people_world.alice), copy).status == "queued"
    with pytest.raises(NotFound):
        jobs.retry(settings, 999)


def test_report_hides_for_review_and_an_admin_decides(people_world: People) -> None:
    settings = people_world.settings
    rex = add_subject(settings, people_world.alice, "Rex", "zwx")
    job, [first, second] = finished_job(settings, people_world.alice, rex, images=2)
    mallory = people_world.actor(people_world.mallory)  # anyone may report

    done = reports.report(mallory, first, whole_message=lambda n: False)
    assert done.job_id == job and "hidden that picture" in done.text
    assert reports.report(mallory, first, whole_message=lambda n: False).text.startswith(
        "Thanks, that picture"
    )
    with session_scope(settings) as s:
        assert s.get(Image, first).review == "pending" and s.get(Image, second).review is None
    with pytest.raises(Refused, match="hidden while an admin reviews it"):  # the maker's too
        images.upscale(people_world.actor(people_world.alice), first)

    assert reports.dismiss(settings, first).owner_id == people_world.alice
    assert "already reviewed" in reports.report(mallory, first, whole_message=lambda n: True).text
    with pytest.raises(NotFound, match="not waiting for review"):
        reports.delete_image(settings, first)

    reports.report(mallory, second, whole_message=lambda n: True)  # the whole message: both images
    with session_scope(settings) as s:
        assert s.get(Image, first).review == "dismissed"  # a decided image stays decided
    reports.block_maker(settings, second)
    with session_scope(settings) as s:
        assert s.get(Image, second) is None and s.get(User, people_world.alice).is_blocked
    assert (
        reports.report(mallory, second, whole_message=lambda n: True).text
        == "That picture is no longer here."
    )
