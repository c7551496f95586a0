"""The closed word lists stored in string columns: job kinds, job states, platforms.

`StrEnum` members *are* their strings, so rows, JSON, templates and metrics labels see
"queued", never "JobState.QUEUED", and a literal "queued" written anywhere still compares
equal. The columns stay VARCHAR (no migration): `core.models.EnumString` writes the value,
never the member's name (a driver that adapts `Enum` by `.name` never sees one), and
reads it back as the member.
"""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    """What a job does; each kind is one Celery task (`core.queue.TASK_NAMES`)."""

    TRAIN = "train"
    SAMPLE = "sample"
    SELFTEST = "selftest"


class JobState(StrEnum):
    """Where a job is in its lifecycle (`core.jobs.TRANSITIONS` says which moves are allowed)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Platform(StrEnum):
    """The surfaces people reach dreambot through, as stored in `users`/`conversations`.

    Those columns stay open strings: a poster is looked up by its platform name, and a test
    or a new adapter may register one of its own.
    """

    DISCORD = "discord"
    SLACK = "slack"
    WEB = "web"  # the browser playground
    CLI = "cli"  # the operator's `dreambot train/generate`
