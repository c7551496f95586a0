"""People: one row per platform identity, block and quotas as an admin sets them, usage."""

from __future__ import annotations

import pytest

from core.actions import images, people
from core.actions.people import QuotaLimits, known_person, person
from core.db import session_scope
from core.errors import Blocked, NotFound, QuotaExceeded
from core.settings import Settings
from tests.core.actions.conftest import People


def test_a_person_is_created_once_and_found_without_creating(db_settings: Settings) -> None:
    settings = db_settings  # get_or_insert speaks both dialects
    assert known_person(settings, "slack", "U1") is None
    with session_scope(settings) as s:
        first = person(s, "slack", "U1", "Ann")
        again = person(s, "slack", "U1", "Ann B.")  # a later name does not overwrite the first
        assert (again.id, again.display_name, again.is_blocked) == (first.id, "Ann", False)
    assert known_person(settings, "slack", "U1") == first.id
    assert known_person(settings, "discord", "U1") is None  # the platform is part of who


def test_a_blocked_person_starts_nothing_until_unblocked(people_world: People) -> None:
    alice = people_world.actor(people_world.alice)
    people.set_blocked(people_world.settings, people_world.alice, True)
    with pytest.raises(Blocked):
        images.generate(alice, images.Generate(prompt="a castle"))
    people.set_blocked(people_world.settings, people_world.alice, False)
    assert images.generate(alice, images.Generate(prompt="a castle")).n == 1
    with pytest.raises(NotFound, match="There is no person #999"):
        people.set_blocked(people_world.settings, 999, True)


def test_own_quotas_override_the_defaults_and_usage_counts_today(people_world: People) -> None:
    settings, alice = people_world.settings, people_world.actor(people_world.alice)
    people.set_quotas(settings, people_world.alice, QuotaLimits(images_per_day=3, max_concurrent_jobs=5))
    images.generate(alice, images.Generate(prompt="a castle", n=2))
    used = people.usage(alice)
    assert (used.images_today, used.images_per_day, used.active_jobs) == (2, 3, 1)
    assert used.trainings_per_day == settings.trainings_per_day  # not set: the default
    with pytest.raises(QuotaExceeded, match="you have 1 left today"):
        images.generate(alice, images.Generate(prompt="a castle", n=2))
    people.set_quotas(settings, people_world.alice, QuotaLimits())  # back to the defaults
    assert people.usage(alice).images_per_day == settings.images_per_day
    assert people.usage(people_world.actor(people_world.mallory)).images_today == 0
    with pytest.raises(NotFound):
        people.usage(people_world.actor(999))


def test_quota_limits_are_whole_numbers_in_range() -> None:
    with pytest.raises(ValueError):
        QuotaLimits(images_per_day=-1)
    with pytest.raises(ValueError):
        QuotaLimits(trainings_per_day=1_000_001)
