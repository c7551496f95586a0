"""The photo coach: scores for each photo and for the set, before anything is trained.

DreamBooth fails most often on the photos: blurred or dark shots, five copies of one shot,
a face too small to learn, two people in the frame. `check_photos` measures each photo on
a small copy (a JPEG is decoded at 1/2–1/8 of its size with Pillow's `draft`, so ten 12 MP
photos take well under a second) and gives each a verdict:

- ok: nothing to say;
- warn: blurry, too dark, overexposed, too small once cropped to a square, and for people
  no clear face or more than one face; it is trained on if the person says so;
- drop: a copy of another photo (a perceptual hash, and the same colours); only the
  sharpest of the copies is trained on.

Sharpness is the variance of the Laplacian of the subject's square crop (see
`core.photo_crop`) on a copy about as tall as training sees it, against an absolute floor
and against the set's median (a photo far softer than its siblings is blurry even when
the whole set is soft). All thresholds are settings (`DREAMBOT_PHOTO_*`), read once into
`PhotoThresholds`. Pillow, numpy and scikit-image only: the bot process runs this.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field
from skimage import filters

from core.photo_crop import Box, crop_strip, face_box, find_faces, fit_square, salient_box
from core.photos import preview_rgb
from core.settings import Settings

ANALYSIS_SIDE = 512  # short side of the copy everything is measured on (training's size)
NEAR_BLACK, NEAR_WHITE = 0.06, 0.97  # luminance (0–1) of crushed shadows and blown highlights
COLOUR_TOLERANCE = 0.08  # copies also share their mean colour (0–1 per channel)
HASH_SIDE = 8  # dHash: 8×8 = 64 bits
WORKERS = 4
# Big decodes one at a time, in this process: a JPEG decodes small (at 1/2–1/8 scale), but
# a 49 MP PNG is ~150 MB of pixels before it is reduced (intake's rule: one such photo in
# memory at a time).
BIG_DECODE = 4_000_000  # pixels
_DECODING = threading.Lock()

Verdict = Literal["ok", "warn", "drop"]
# What each problem makes a photo: (as part of "This photo …", in a set summary for one, for many).
PROBLEMS: dict[str, tuple[str, str, str]] = {
    "blurry": ("looks blurry", "is blurry", "are blurry"),
    "dark": ("is too dark", "is too dark", "are too dark"),
    "bright": ("is overexposed", "is overexposed", "are overexposed"),
    "small": ("is small once cropped to a square", "is too small", "are too small"),
    "no_face": ("shows no clear, front-facing face", "shows no clear face", "show no clear face"),
    "faces": ("shows {faces} faces", "shows more than one face", "show more than one face"),
    "copy": ("is a copy of photo {copy_of}", "is a copy of another", "are copies of another"),
}
ADVICE = {
    "copy": "only one of them is trained on",
    "blurry": "a sharper shot teaches more detail",
    "dark": "a photo in better light shows more of your subject",
    "bright": "a photo out of direct sun or flash keeps the detail",
    "small": "training works at 512 pixels, so this one will look soft",
    "no_face": "close-ups where the face is clearly visible teach a face best",
    "faces": "each photo should show only the person you are training",
}


def _setting(name: str) -> Any:
    return Settings.model_fields[f"photo_{name}"].default


class PhotoThresholds(BaseModel):
    """Every limit the coach applies: the `DREAMBOT_PHOTO_*` settings (defaults there)."""

    min_sharpness: float = _setting("min_sharpness")
    blur_ratio: float = _setting("blur_ratio")
    dark_share: float = _setting("dark_share")
    bright_share: float = _setting("bright_share")
    duplicate_distance: int = _setting("duplicate_distance")
    min_crop_side: int = _setting("min_crop_side")
    min_distinct: int = _setting("min_distinct")

    @classmethod
    def from_settings(cls, settings: Settings) -> PhotoThresholds:
        return cls(**{name: getattr(settings, f"photo_{name}") for name in cls.model_fields})


class PhotoScore(BaseModel):
    """One photo's measurements and verdict. `crop` is in the upright photo's pixels."""

    index: int
    filename: str
    verdict: Verdict
    reason: str  # one sentence for the person
    problems: list[str]  # keys of PROBLEMS
    width: int
    height: int
    sharpness: float  # variance of the Laplacian of the crop, on the 512 px copy
    relative_sharpness: float  # against the set's median (1.0: typical for this set)
    dark_share: float  # share of the crop that is nearly black
    bright_share: float  # share of the crop that is blown-out white
    faces: int | None  # frontal faces found (people only; None: not looked for)
    crop: tuple[int, int, int, int]
    crop_side: int
    copy_of: int | None = None  # index of the photo this one copies (the kept one)


class PhotoReport(BaseModel):
    photos: list[PhotoScore]
    kept: list[int]  # indexes trained on: every photo but the dropped copies
    set_problems: list[str]
    summary: str  # one or two sentences about the whole set
    needs_confirmation: bool  # anything to point out: ask before training
    strip: bytes | None = Field(None, exclude=True)  # JPEG of the kept crops side by side

    def kept_crops(self) -> list[tuple[int, int, int, int]]:
        return [self.photos[i].crop for i in self.kept]

    def question(self) -> str:
        """What every surface asks before training: the summary, a line for each photo with
        something to say, and "Train anyway?"."""
        lines = [self.summary]
        lines += [f"• {s.filename}: {s.reason}" for s in self.photos if s.verdict != "ok"]
        return "\n".join([*lines, "Train anyway?"])


@dataclass
class _Measured:
    copy: Image.Image  # the analysis copy (RGB)
    scale: float  # analysis pixels per photo pixel
    width: int
    height: int
    crop: Box  # in the photo's pixels
    crop_small: Box  # the same on the analysis copy
    sharpness: float
    dark_share: float
    bright_share: float
    faces: int | None
    hash: int
    colour: np.ndarray


def analysis_copy(data: bytes) -> tuple[Image.Image, int, int]:
    """The photo upright and in RGB, about `ANALYSIS_SIDE` on its short side (never
    enlarged; decoded as intake's `preview_rgb` decodes: a JPEG at a fraction of its size),
    with the full photo's upright width and height. A photo that decodes big (a PNG is
    decoded whole before it is reduced) waits for the others: one at a time."""
    with Image.open(io.BytesIO(data)) as image:  # the header only
        width, height = image.size
        longest = math.ceil(ANALYSIS_SIDE * max(width, height) / max(1, min(width, height)))
        image.draft(None, (longest, longest))  # the scale a JPEG will decode at; decodes nothing
        big = image.width * image.height > BIG_DECODE
    with _DECODING if big else contextlib.nullcontext():
        if _sideways(data):
            width, height = height, width
        return preview_rgb(data, longest, reducing_gap=1.0), width, height


def _sideways(data: bytes) -> bool:
    """Whether the photo's EXIF says it is stored turned by 90°. A PNG's EXIF can come after
    its pixels, which are then decoded to find it (and released on return)."""
    image = Image.open(io.BytesIO(data))
    try:
        return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    finally:
        image.close()


def dhash(gray: Image.Image) -> int:
    """64-bit difference hash: is each cell of a 9×8 copy brighter than its right neighbour."""
    cells = np.asarray(gray.resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BOX), dtype=np.int16)
    bits = (cells[:, 1:] > cells[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def measure(data: bytes, person: bool, min_crop_side: int = 0) -> _Measured:
    rgb, width, height = analysis_copy(data)
    gray_image = rgb.convert("L")
    gray = np.asarray(gray_image, dtype=np.float32) / 255.0
    scale = rgb.width / width
    faces = find_faces(gray) if person else None
    least = round(min_crop_side * scale)  # a far face still gets a crop training can use
    small = face_box(faces[0], rgb.width, rgb.height, least) if faces else salient_box(gray)
    centre_x, centre_y = (small.left + small.right) / 2 / scale, (small.top + small.bottom) / 2 / scale
    crop = fit_square(centre_x, centre_y, round(small.side / scale), width, height)
    region = gray[small.top : small.bottom, small.left : small.right]
    return _Measured(
        copy=rgb,
        scale=scale,
        width=width,
        height=height,
        crop=crop,
        crop_small=small,
        sharpness=float(filters.laplace(region, ksize=3).var()),
        dark_share=float((region < NEAR_BLACK).mean()),
        bright_share=float((region > NEAR_WHITE).mean()),
        faces=len(faces) if faces is not None else None,
        hash=dhash(gray_image),
        colour=np.asarray(rgb, dtype=np.float32).reshape(-1, 3).mean(axis=0) / 255.0,
    )


def _copies(measured: Sequence[_Measured], limits: PhotoThresholds) -> dict[int, int]:
    """{index of a copy: index of the photo kept instead}; of each group of copies the
    sharpest is kept (the first one on a tie)."""
    n = len(measured)
    group = list(range(n))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            a, b = measured[i], measured[j]
            same_shape = bin(a.hash ^ b.hash).count("1") <= limits.duplicate_distance
            same_colour = float(np.abs(a.colour - b.colour).max()) <= COLOUR_TOLERANCE
            if same_shape and same_colour:
                group[root(j)] = root(i)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    copies: dict[int, int] = {}
    for indexes in members.values():
        best = max(indexes, key=lambda i: (measured[i].sharpness, -i))
        copies.update({i: best for i in indexes if i != best})
    return copies


def _problems(m: _Measured, relative: float, copy_of: int | None, limits: PhotoThresholds) -> list[str]:
    found = []
    if m.sharpness < limits.min_sharpness or relative < limits.blur_ratio:
        found.append("blurry")
    if m.dark_share > limits.dark_share:
        found.append("dark")
    if m.bright_share > limits.bright_share:
        found.append("bright")
    if m.crop.side < limits.min_crop_side:
        found.append("small")
    if m.faces == 0:
        found.append("no_face")
    elif m.faces is not None and m.faces > 1:
        found.append("faces")
    if copy_of is not None:
        found.insert(0, "copy")
    return found


def _reason(problems: list[str], faces: int | None, copy_of: int | None) -> str:
    if not problems:
        return "Looks good."
    words = {"faces": faces, "copy_of": (copy_of or 0) + 1}
    parts = [PROBLEMS[p][0].format(**words) for p in problems]
    said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"This photo {said} — {ADVICE[problems[0]]}."


def _summary(scores: list[PhotoScore], kept: int, set_problems: list[str]) -> str:
    n = len(scores)
    parts: list[str] = []
    for key, (_, one, many) in PROBLEMS.items():
        # A dropped copy's other problems do not matter: it is not trained on.
        count = sum(key in s.problems and (key == "copy" or s.verdict != "drop") for s in scores)
        if count:
            verb = one if count == 1 else many
            parts.append(f"{count} of {n} photos {verb}" if not parts else f"{count} {verb}")
    parts += set_problems
    if not parts:
        return f"All {n} photos look good."
    return f"{'; '.join(parts)} — {kept} photo{'s' * (kept != 1)} will be used."


def check_photos(
    photos: Sequence[tuple[bytes, str]],
    *,
    person: bool,
    limits: PhotoThresholds | None = None,
    strip: bool = False,
) -> PhotoReport:
    """Score each photo and the set. `person`: look for exactly one face and crop on it.
    `strip`: also render the kept crops side by side (`PhotoReport.strip`)."""
    limits = limits or PhotoThresholds()
    # Threads overlap one photo's decoding (Pillow lets go of the GIL; big ones one at a
    # time, see `_DECODING`) with another's face search (which holds it).
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        measured = list(pool.map(lambda p: measure(p[0], person, limits.min_crop_side), photos))
    median = float(np.median([m.sharpness for m in measured])) if measured else 0.0
    copies = _copies(measured, limits)
    scores = []
    for i, (m, (_data, name)) in enumerate(zip(measured, photos, strict=True)):
        relative = m.sharpness / median if median > 0 else 1.0
        problems = _problems(m, relative, copies.get(i), limits)
        scores.append(
            PhotoScore(
                index=i,
                filename=name,
                verdict="drop" if i in copies else "warn" if problems else "ok",
                reason=_reason(problems, m.faces, copies.get(i)),
                problems=problems,
                width=m.width,
                height=m.height,
                sharpness=round(m.sharpness, 6),
                relative_sharpness=round(relative, 3),
                dark_share=round(m.dark_share, 3),
                bright_share=round(m.bright_share, 3),
                faces=m.faces,
                crop=tuple(m.crop),
                crop_side=m.crop.side,
                copy_of=copies.get(i),
            )
        )
    kept = [i for i in range(len(measured)) if i not in copies]
    set_problems = []
    if 0 < len(kept) < limits.min_distinct:
        set_problems.append(
            f"only {len(kept)} different photo{'s' * (len(kept) != 1)} — "
            f"{limits.min_distinct} or more from different angles work better"
        )
    return PhotoReport(
        photos=scores,
        kept=kept,
        set_problems=set_problems,
        summary=_summary(scores, len(kept), set_problems),
        needs_confirmation=any(s.verdict != "ok" for s in scores) or bool(set_problems),
        strip=crop_strip([(measured[i].copy, measured[i].crop_small) for i in kept]) if strip else None,
    )
