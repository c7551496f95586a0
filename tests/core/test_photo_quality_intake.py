"""The photo coach at intake: nothing is created until the person confirms, copies are not
stored, and training learns from the coach's crops."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy import func, select

from core.db import session_scope
from core.models import Job, Photo, Subject, User
from core.settings import Settings
from core.storage import storage_from_settings
from core.subjects import PhotosNeedConfirmation, SubjectError, start_training
from gpu_worker.training.job import _load_photos, _subject
from tests.helpers.photos import face_jpeg, jpeg


def owner(settings: Settings) -> int:
    with session_scope(settings) as s:
        user = User(platform="test", platform_user_id="u1", display_name="u1")
        s.add(user)
        s.flush()
        return user.id


def count(settings: Settings, model: type) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def recompressed(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    out = io.BytesIO()
    image.resize((400, 400)).save(out, "JPEG", quality=60)
    return out.getvalue()


def test_warnings_stop_training_until_confirmed_and_copies_are_not_trained_on(
    sqlite_settings: Settings,
) -> None:
    settings, user = sqlite_settings, owner(sqlite_settings)
    photos = [
        (jpeg(1), "a.jpg"),
        (jpeg(2), "b.jpg"),
        (recompressed(jpeg(1)), "a-copy.jpg"),
        (jpeg(3), "c.jpg"),
    ]
    with pytest.raises(PhotosNeedConfirmation) as asked:
        start_training(settings, owner_id=user, name="Rex", class_noun="dog", photos=photos)
    assert str(asked.value).splitlines() == [
        "1 of 4 photos is a copy of another — 3 photos will be used.",
        "• a-copy.jpg: This photo is a copy of photo 1 and looks blurry — only one of them is trained on.",
        "Train anyway?",
    ]
    assert [s.verdict for s in asked.value.report.photos] == ["ok", "ok", "drop", "ok"]
    assert count(settings, Subject) == count(settings, Job) == count(settings, Photo) == 0

    started = start_training(
        settings, owner_id=user, name="Rex", class_noun="dog", photos=photos, confirmed=True
    )
    with session_scope(settings) as s:
        stored = list(
            s.scalars(select(Photo).where(Photo.subject_id == started.subject_id).order_by(Photo.id))
        )
        job = s.get(Job, started.job_id)
        assert job is not None and str(job.progress["preview"]).startswith("data:image/jpeg;base64,")
        assert len(stored) == 3 and all(p.crop == [0, 0, 512, 512] for p in stored)


def test_too_few_different_photos_is_refused_even_when_confirmed(sqlite_settings: Settings) -> None:
    settings, user = sqlite_settings, owner(sqlite_settings)
    photos = [(jpeg(1), "a.jpg"), (recompressed(jpeg(1)), "b.jpg"), (jpeg(2), "c.jpg")]
    with pytest.raises(SubjectError, match="leaves 2 different ones; I need at least 3"):
        start_training(settings, owner_id=user, name="Rex", class_noun="dog", photos=photos, confirmed=True)
    assert count(settings, Subject) == 0


def test_good_photos_go_straight_on_and_training_reads_the_face_crops(sqlite_settings: Settings) -> None:
    settings, user = sqlite_settings, owner(sqlite_settings)
    wide = Image.open(io.BytesIO(face_jpeg(0)))
    canvas = Image.new("RGB", (900, 512), (128, 128, 128))
    canvas.paste(wide, (388, 0))  # the person at the right of a landscape photo
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=92)
    photos = [(out.getvalue(), "right.jpg"), (face_jpeg(1), "b.jpg"), (face_jpeg(2), "c.jpg")]
    started = start_training(
        settings, owner_id=user, name="Ann", class_noun="woman", photos=photos, consent=True
    )  # no warnings: not asked
    info = _subject(settings, started.subject_id)
    left, top, right, bottom = info.crops[0] or []
    assert left >= 388 and right - left == bottom - top  # on the person, not the centre (194…706)
    images = _load_photos(storage_from_settings(settings), info)
    assert images[0].size == (right - left, bottom - top)
