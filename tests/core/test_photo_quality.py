"""The photo coach on generated photos: each problem is flagged, and the good photo is not."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data

from core.photo_crop import Box, find_faces
from core.photo_quality import PhotoThresholds, check_photos
from core.settings import load_settings


def encode(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


ASTRONAUT = Image.fromarray(data.astronaut())  # 512×512, one face
CAT = Image.fromarray(data.chelsea())
COFFEE = Image.fromarray(data.coffee())
ROCKET = Image.fromarray(data.rocket())
# scikit-image's photos are 300–512 pixels tall: below the default crop floor of 384.
LIMITS = PhotoThresholds(min_crop_side=300)


def problems(
    photos: list[Image.Image | bytes], person: bool = False, limits: PhotoThresholds = LIMITS
) -> list[list[str]]:
    encoded = [p if isinstance(p, bytes) else encode(p) for p in photos]
    report = check_photos([(d, f"p{i}.jpg") for i, d in enumerate(encoded)], person=person, limits=limits)
    return [s.problems for s in report.photos]


def test_a_blurred_copy_is_blurry_and_the_sharp_original_is_not() -> None:
    blurred = COFFEE.filter(ImageFilter.GaussianBlur(3))
    found = problems([CAT, COFFEE, ROCKET, blurred])
    assert found[:3] == [[], [], []]
    assert "blurry" in found[3]


def test_blur_is_also_judged_against_the_set() -> None:
    """Soft but above the absolute floor: blurry next to sharp siblings."""
    soft = COFFEE.filter(ImageFilter.GaussianBlur(1.2))
    limits = PhotoThresholds(min_sharpness=0.0, min_crop_side=300)
    report = check_photos([(encode(p), "x.jpg") for p in (CAT, ROCKET, soft)], person=False, limits=limits)
    assert report.photos[2].relative_sharpness < limits.blur_ratio
    assert report.photos[2].problems == ["blurry"]


def test_a_resized_recompressed_copy_is_dropped_but_another_crop_of_the_scene_is_kept() -> None:
    copy = encode(COFFEE.resize((320, 240)), quality=55)
    shifted = COFFEE.crop((90, 40, 600, 400)).resize((600, 424))  # same scene, another framing
    report = check_photos(
        [(encode(COFFEE), "a.jpg"), (encode(CAT), "b.jpg"), (copy, "c.jpg"), (encode(shifted), "d.jpg")],
        person=False,
        limits=LIMITS,
    )
    verdicts = [s.verdict for s in report.photos]
    assert verdicts[2] == "drop" and report.photos[2].copy_of == 0
    assert "copy" not in report.photos[3].problems
    assert report.kept == [0, 1, 3]
    assert "copy of photo 1" in report.photos[2].reason


def test_of_two_copies_the_sharper_one_is_kept() -> None:
    soft = encode(CAT.filter(ImageFilter.GaussianBlur(1)))
    report = check_photos(
        [(soft, "soft.jpg"), (encode(CAT), "sharp.jpg"), (encode(ROCKET), "r.jpg")],
        person=False,
        limits=LIMITS,
    )
    assert report.photos[0].verdict == "drop" and report.photos[0].copy_of == 1
    assert report.kept == [1, 2]


def test_a_nearly_black_and_a_blown_out_photo_are_flagged() -> None:
    dark = COFFEE.point(lambda v: int(v * 0.05))
    blown = COFFEE.point(lambda v: min(255, 100 + v * 4))
    found = problems([CAT, dark, blown])
    assert found[0] == []
    assert "dark" in found[1]
    assert "bright" in found[2]


def test_a_small_photo_blown_up_to_300_pixels_is_flagged() -> None:
    tiny_up = ROCKET.resize((40, 40)).resize((300, 300), Image.Resampling.BICUBIC)
    found = problems([COFFEE, ASTRONAUT, tiny_up], limits=PhotoThresholds())  # the default floor
    assert found[:2] == [[], []]
    assert {"small", "blurry"} <= set(found[2])


def test_the_astronaut_has_one_face_and_the_person_crop_contains_it() -> None:
    gray = np.asarray(ASTRONAUT.convert("L"), dtype=np.float32) / 255
    faces = find_faces(gray)
    assert len(faces) == 1
    report = check_photos([(encode(ASTRONAUT), "eileen.jpg")], person=True)
    score = report.photos[0]
    assert score.faces == 1 and "no_face" not in score.problems and "faces" not in score.problems
    crop = Box(*score.crop)
    assert crop.contains(faces[0])
    assert crop.right - crop.left == crop.bottom - crop.top  # square
    face_share = (faces[0].right - faces[0].left) / crop.side
    assert 0.15 < face_share <= 0.45  # head and shoulders, not the whole photo


def test_two_astronauts_side_by_side_give_two_faces() -> None:
    pair = Image.new("RGB", (1024, 512))
    pair.paste(ASTRONAUT, (0, 0))
    pair.paste(ASTRONAUT, (512, 0))
    report = check_photos([(encode(pair), "pair.jpg")], person=True)
    assert report.photos[0].faces == 2
    assert "faces" in report.photos[0].problems
    assert "2 faces" in report.photos[0].reason


def test_a_cat_trained_as_a_person_warns_that_no_face_was_found() -> None:
    report = check_photos([(encode(CAT), "chelsea.jpg")], person=True)
    assert report.photos[0].faces == 0
    assert report.photos[0].verdict == "warn"
    assert "no clear, front-facing face" in report.photos[0].reason
    assert report.needs_confirmation


def test_the_crop_follows_the_subject_off_centre() -> None:
    """A detailed subject at the left of a plain wide photo: the crop goes there."""
    wide = Image.new("RGB", (1200, 400), (200, 200, 200))
    wide.paste(ROCKET.resize((300, 400)), (0, 0))
    report = check_photos([(encode(wide), "left.jpg")], person=False)
    assert report.photos[0].crop == (0, 0, 400, 400)
    plain = check_photos([(encode(CAT), "cat.jpg")], person=False)  # the cat fills the frame
    assert plain.photos[0].crop == (76, 0, 376, 300)  # the centre square


def test_the_summary_counts_each_problem_and_the_photos_used() -> None:
    camera = Image.fromarray(data.camera()).convert("RGB")
    blurred = [encode(p.filter(ImageFilter.GaussianBlur(4))) for p in (camera, ROCKET)]
    copies = [encode(CAT.resize((480, 319)), quality=60), encode(CAT.resize((460, 306)), quality=45)]
    photos = [encode(CAT), encode(COFFEE), *blurred, *copies, encode(ASTRONAUT)]
    report = check_photos([(d, f"p{i}.jpg") for i, d in enumerate(photos)], person=False, limits=LIMITS)
    assert report.summary.startswith("2 of 7 photos are blurry; 2 are copies of another")
    assert report.summary.endswith("— 5 photos will be used.")
    assert report.needs_confirmation


def test_good_photos_need_no_confirmation() -> None:
    report = check_photos(
        [(encode(p), "x.jpg") for p in (CAT, COFFEE, ROCKET)], person=False, limits=LIMITS, strip=True
    )
    assert not report.needs_confirmation
    assert report.summary == "All 3 photos look good."
    assert all(s.verdict == "ok" and s.reason == "Looks good." for s in report.photos)
    strip = Image.open(io.BytesIO(report.strip or b""))
    assert strip.size == (3 * 96, 96)


def test_thresholds_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMBOT_PHOTO_MIN_CROP_SIDE", "1000")
    monkeypatch.setenv("DREAMBOT_PHOTO_MIN_DISTINCT", "5")
    limits = PhotoThresholds.from_settings(load_settings())
    assert limits.min_crop_side == 1000 and limits.min_distinct == 5
    report = check_photos([(encode(p), "x.jpg") for p in (CAT, COFFEE, ROCKET)], person=False, limits=limits)
    assert all("small" in s.problems for s in report.photos)
    assert "only 3 different photos" in report.summary
