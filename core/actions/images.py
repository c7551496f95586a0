"""Pictures: generate, vary, upscale, reroll or repeat, and the check before deleting a result.

Each one checks that the subjects, image or job are the person's (`ownership`), names every
subject as "token class" in the diffusion prompt (`core.scene`), validates the request as
a `SampleRequest` and submits a sample job keyed on the actor's platform event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from core import jobs
from core.actions.actor import Actor
from core.actions.ownership import own_image, own_job, own_subjects
from core.db import session_scope
from core.models import Job, Subject
from core.sample_request import parse_sample_request
from core.scene import SubjectRef, scene_prompt

ASPECTS = {"square": (None, None), "portrait": (512, 768), "landscape": (768, 512)}


class Generate(BaseModel):
    """Pictures of these subjects (ids) in the scene `prompt` (plain English)."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    subject_ids: list[int] = []
    negative_prompt: str = ""
    n: int = 1
    guidance_scale: float | None = None
    steps: int | None = None
    seed: int | None = None
    aspect: Literal["square", "portrait", "landscape"] = "square"


class Vary(BaseModel):
    """Variations of an earlier image, optionally in a new scene."""

    model_config = ConfigDict(frozen=True)

    image_id: int
    prompt: str | None = None
    strength: float = 0.6
    n: int = 1
    seed: int | None = None


@dataclass(frozen=True)
class JobStarted:
    job_id: int
    prompt: str  # the diffusion prompt, subjects named by token
    n: int


def submit(actor: Actor, params: dict[str, Any]) -> JobStarted:
    """Validate `params` as a sample request and queue it (InvalidSampleRequest is user-facing)."""
    request = parse_sample_request(params)
    job = jobs.submit(
        actor.settings,
        kind="sample",
        params=request.model_dump(mode="json", exclude_none=True),
        owner_id=actor.user_id,
        subject_ids=request.subject_ids,
        conversation_id=actor.conversation_id,
        idempotency_key=actor.next_key(),
    )
    actor.done(job.id)
    return JobStarted(job.id, request.prompt, request.n)


def _refs(subjects: list[Subject]) -> list[SubjectRef]:
    return [SubjectRef(s.token, s.class_noun, s.name) for s in subjects]


def generate(actor: Actor, request: Generate) -> JobStarted:
    with session_scope(actor.settings) as session:
        subjects = own_subjects(session, actor.user_id, request.subject_ids)
        prompt = scene_prompt(request.prompt, _refs(subjects))
    width, height = ASPECTS[request.aspect]
    params = {
        **request.model_dump(exclude={"aspect"}),
        "prompt": prompt,
        "subject_ids": [s.id for s in subjects],
        "width": width,
        "height": height,
    }
    return submit(actor, {k: v for k, v in params.items() if v is not None})


def vary(actor: Actor, request: Vary) -> JobStarted:
    with session_scope(actor.settings) as session:
        image, job = own_image(session, actor.user_id, request.image_id)
        subjects = list(job.subjects)
        prompt = scene_prompt(request.prompt, _refs(subjects)) if request.prompt else image.prompt
    params: dict[str, Any] = {
        "prompt": prompt,
        "subject_ids": [s.id for s in subjects],
        "n": request.n,
        "variation_of": request.image_id,
        "strength": request.strength,
    }
    if request.seed is not None:
        params["seed"] = request.seed
    return submit(actor, params)


def upscale(actor: Actor, image_id: int) -> JobStarted:
    """A x2 larger, sharper copy of one of the person's images."""
    with session_scope(actor.settings) as session:
        image, job = own_image(session, actor.user_id, image_id)
        ids = [s.id for s in job.subjects]
        params = {"prompt": image.prompt, "subject_ids": ids, "n": 1, "upscale_of": image_id}
    return submit(actor, params)


def _again(actor: Actor, params: dict[str, Any], n: int | None = None) -> JobStarted:
    params = {k: v for k, v in params.items() if k != "seed"}  # new seeds: new pictures
    if n:
        params["n"] = n
    return submit(actor, params)


def reroll(actor: Actor, job_id: int) -> JobStarted:
    """The same request as one of the person's jobs, with new seeds."""
    with session_scope(actor.settings) as session:
        params = dict(own_job(session, actor.user_id, job_id).params or {})
    return _again(actor, params)


def again(actor: Actor, n: int | None = None) -> JobStarted | None:
    """The person's latest pictures again (not an upscale), with new seeds and `n` if given;
    None when there is nothing to repeat."""
    with session_scope(actor.settings) as session:
        recent = session.scalars(
            select(Job)
            .where(Job.owner_id == actor.user_id, Job.kind == "sample")
            .order_by(Job.id.desc())
            .limit(20)
        )
        last = next((j for j in recent if not (j.params or {}).get("upscale_of")), None)
        params = dict(last.params or {}) if last else {}
    return _again(actor, params, n) if params else None


def delete_result(actor: Actor, job_id: int) -> int:
    """The person may remove the message with this job's pictures: it is their job. Nothing
    in the database changes (the images stay for the dashboard); returns the job id."""
    with session_scope(actor.settings) as session:
        return own_job(session, actor.user_id, job_id).id
