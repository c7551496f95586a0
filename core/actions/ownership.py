"""The one place that decides whether a person may use a subject, an image or a job.

The actions ask here (no surface does), so the rule is written once: someone else's item
reads exactly like a missing one, a subject must be trained before it is drawn, and a
reported image stays out of reach while it is reviewed. The refusals say "this person's"
(the agent relays them to the model); a surface speaking to the person directly may word
`NotYours` its own way, and the agent adds its advice (`hint`) to it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from core.errors import Refused
from core.models import Image, Job, Subject


class NotYours(Refused):
    """Someone else's item, or a missing one (the two are not told apart)."""

    def __init__(self, kind: str, item_id: int, hint: str = "") -> None:
        self.kind, self.item_id = kind, item_id
        super().__init__(f"{kind.capitalize()} #{item_id} is not one of this person's {kind}s{hint}.")


def own_subjects(session: Session, user_id: int, ids: Iterable[int]) -> list[Subject]:
    """The person's trained subjects with these ids, in order, each once."""
    out = []
    for sid in dict.fromkeys(ids):
        subject = session.get(Subject, sid)
        if subject is None or subject.owner_id != user_id:
            raise NotYours("subject", sid)
        if not subject.artifact_key:
            raise Refused(
                f"“{subject.name}” (#{sid}) is not trained yet; it can be used when training is done."
            )
        out.append(subject)
    return out


def own_image(session: Session, user_id: int, image_id: int) -> tuple[Image, Job]:
    """The person's image (not hidden for review) and the job that drew it."""
    image = session.get(Image, image_id)
    job = session.get(Job, image.job_id) if image is not None else None
    if image is None or job is None or job.owner_id != user_id:
        raise NotYours("image", image_id)
    if image.hidden_at is not None:
        raise Refused(f"Image #{image_id} was reported and is hidden while an admin reviews it.")
    return image, job


def own_job(session: Session, user_id: int, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner_id != user_id:
        raise NotYours("job", job_id)
    return job
