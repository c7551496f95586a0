"""Pictures: subjects named by token in the prompt, and only the person's own subjects,
images and jobs — someone else's reads exactly like a missing one."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.actions import images, people
from core.actions.ownership import NotYours
from core.actions.people import QuotaLimits
from core.db import session_scope
from core.errors import Refused
from core.models import Job
from tests.core.actions.conftest import People, add_subject, finished_job


def params_of(settings, job_id: int) -> dict:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return dict(job.params or {}) | {"key": job.idempotency_key}


def test_generate_names_the_subject_by_token_and_keys_on_the_event(people_world: People) -> None:
    settings = people_world.settings
    rex = add_subject(settings, people_world.alice, "Rex", "zwx")
    alice = people_world.actor(people_world.alice, event="slack:E1")
    started = images.generate(alice, images.Generate(prompt="Rex on the moon", subject_ids=[rex, rex], n=2))
    assert started.prompt == "a photo of zwx dog on the moon" and started.n == 2
    stored = params_of(settings, started.job_id)
    assert stored["prompt"] == started.prompt and stored["subject_ids"] == [rex]
    assert stored["key"] == "slack:E1:1" and alice.job_ids == [started.job_id]
    wide = images.generate(alice, images.Generate(prompt="a castle", aspect="landscape"))
    assert (params_of(settings, wide.job_id)["width"], params_of(settings, wide.job_id)["height"]) == (
        768,
        512,
    )
    assert params_of(settings, wide.job_id)["key"] == "slack:E1:2"


def test_someone_elses_subject_reads_like_a_missing_one(people_world: People) -> None:
    fido = add_subject(people_world.settings, people_world.mallory, "Fido", "sks")
    alice = people_world.actor(people_world.alice)
    with pytest.raises(NotYours) as theirs:
        images.generate(alice, images.Generate(prompt="a dog", subject_ids=[fido]))
    with pytest.raises(NotYours) as missing:
        images.generate(alice, images.Generate(prompt="a dog", subject_ids=[fido + 100]))
    assert str(theirs.value) == f"Subject #{fido} is not one of this person's subjects."
    assert str(missing.value) == str(theirs.value).replace(str(fido), str(fido + 100))
    untrained = add_subject(people_world.settings, people_world.alice, "Rex", "zwx", trained=False)
    with pytest.raises(Refused, match="not trained yet"):
        images.generate(alice, images.Generate(prompt="a dog", subject_ids=[untrained]))
    assert alice.job_ids == []


def test_vary_upscale_reroll_and_delete_only_the_persons_own(people_world: People) -> None:
    settings = people_world.settings
    rex = add_subject(settings, people_world.alice, "Rex", "zwx")
    fido = add_subject(settings, people_world.mallory, "Fido", "sks")
    job, [image] = finished_job(settings, people_world.alice, rex)
    their_job, [their_image] = finished_job(settings, people_world.mallory, fido)
    alice = people_world.actor(people_world.alice)
    people.set_quotas(settings, people_world.alice, QuotaLimits(max_concurrent_jobs=10))

    varied = images.vary(alice, images.Vary(image_id=image, prompt="my dog in the snow", seed=3))
    assert params_of(settings, varied.job_id)["prompt"] == "a photo of zwx dog in the snow"
    assert params_of(settings, varied.job_id)["variation_of"] == image
    bigger = params_of(settings, images.upscale(alice, image).job_id)
    assert bigger["upscale_of"] == image and bigger["prompt"] == "a photo of zwx dog on a beach"
    rerolled = params_of(settings, images.reroll(alice, job).job_id)
    assert "seed" not in rerolled and rerolled["prompt"] == "a photo of zwx dog on a beach"
    assert images.delete_result(alice, job) == job

    for act in (
        lambda: images.vary(alice, images.Vary(image_id=their_image)),
        lambda: images.upscale(alice, their_image),
        lambda: images.upscale(alice, their_image + 100),
    ):
        with pytest.raises(NotYours, match="is not one of this person's images"):
            act()
    for act in (
        lambda: images.reroll(alice, their_job),
        lambda: images.delete_result(alice, their_job + 100),
    ):
        with pytest.raises(NotYours, match="is not one of this person's jobs"):
            act()


def test_again_repeats_the_latest_pictures_not_an_upscale(people_world: People) -> None:
    settings = people_world.settings
    alice = people_world.actor(people_world.alice)
    assert images.again(alice) is None  # nothing to repeat yet
    rex = add_subject(settings, people_world.alice, "Rex", "zwx")
    _, [image] = finished_job(settings, people_world.alice, rex, images=1)
    images.upscale(alice, image)
    again = images.again(alice, n=3)
    assert again is not None and again.n == 3 and again.prompt == "a photo of zwx dog on a beach"
    with session_scope(settings) as s:
        assert s.scalar(select(Job.params).where(Job.id == again.job_id)).get("upscale_of") is None
