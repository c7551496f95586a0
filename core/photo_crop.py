"""Where a photo's square training crop goes: on the face for people, on the subject otherwise.

Training sees a square. A centre crop cuts the head off a portrait taken in landscape and
the dog off a photo where it sits at the edge, so the crop is chosen here, from a small
greyscale copy of the photo, and stored with the photo (`Photo.crop`) for training to use.

- People: the face is found with scikit-image's LBP frontal-face cascade (it ships with
  scikit-image, so this works offline); the crop is centred on the face, wide enough for
  the shoulders, the face taking `FACE_SHARE` of the crop's width.
- Everything else: the centre crop, unless the gradient energy (where the detail is)
  clearly sits elsewhere along the long side; plain backgrounds have little of it.

Boxes are `(left, top, right, bottom)` in the upright photo's pixels, always square and
always inside the photo. Pillow, numpy and scikit-image only: the bot process runs this.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import feature, filters, transform

FACE_DETECT_SIDE = 160  # faces are looked for on a copy this tall (short side): ~40 ms a photo
FACE_WINDOW = 24  # the cascade's window: faces smaller than this on that copy are not seen
FACE_SHARE = 0.4  # the face's width as a share of the crop's: head and shoulders
FACE_ABOVE_CENTRE = 0.12  # the face sits this share of the crop above its middle (room for shoulders)
SALIENCY_GAIN = 1.25  # leave the centre only for a window with this much more detail
STRIP_THUMB = 96  # side of each crop in the strip shown on the training card


class Box(NamedTuple):
    left: int
    top: int
    right: int
    bottom: int

    @property
    def side(self) -> int:
        return min(self.right - self.left, self.bottom - self.top)

    def scaled(self, factor: float) -> Box:
        return Box(*(round(float(v) * factor) for v in self))

    def contains(self, other: Box) -> bool:
        return (
            self.left <= other.left
            and self.top <= other.top
            and self.right >= other.right
            and self.bottom >= other.bottom
        )


@lru_cache(maxsize=1)
def _cascade() -> feature.Cascade:
    return feature.Cascade(skdata.lbp_frontal_face_cascade_filename())


def find_faces(gray: np.ndarray) -> list[Box]:
    """Frontal faces in a greyscale float image (any size), as boxes in its own pixels,
    largest first. Detection runs on a copy `FACE_DETECT_SIDE` tall, so faces narrower than
    `FACE_WINDOW / FACE_DETECT_SIDE` of the short side (15%) are not found: too small to
    learn a face from anyway."""
    h, w = gray.shape
    scale = min(1.0, FACE_DETECT_SIDE / min(h, w))
    small = transform.rescale(gray, scale, anti_aliasing=True) if scale < 1 else gray
    short = min(small.shape)
    found = _cascade().detect_multi_scale(
        small,
        scale_factor=1.25,  # 1.2 finds the same faces at 1.6× the time
        step_ratio=1,
        min_size=(FACE_WINDOW, FACE_WINDOW),
        max_size=(short, short),
        min_neighbor_number=4,
    )
    boxes = [Box(d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]).scaled(1 / scale) for d in found]
    return sorted(boxes, key=lambda b: -b.side)


def fit_square(centre_x: float, centre_y: float, side: int, width: int, height: int) -> Box:
    """A square of `side` centred as near (`centre_x`, `centre_y`) as the photo allows."""
    side = max(1, int(min(side, width, height)))
    left = round(min(max(centre_x - side / 2, 0), width - side))
    top = round(min(max(centre_y - side / 2, 0), height - side))
    return Box(left, top, left + side, top + side)


def face_box(face: Box, width: int, height: int, min_side: int = 0) -> Box:
    """Head and shoulders around `face`: the face `FACE_SHARE` of the width, a little above
    the middle. A face close to the camera gets the largest square the photo has; a far one
    gets at least `min_side` (when the photo has it), so the crop keeps enough pixels."""
    side = max(round((face.right - face.left) / FACE_SHARE), min_side)
    cx = (face.left + face.right) / 2
    cy = (face.top + face.bottom) / 2 + FACE_ABOVE_CENTRE * min(side, width, height)
    return fit_square(cx, cy, side, width, height)


def salient_box(gray: np.ndarray) -> Box:
    """The square (short side) along the long side with the most gradient energy, when it
    has clearly more than the centre; else the centre. In `gray`'s pixels."""
    h, w = gray.shape
    side = min(h, w)
    centre = fit_square(w / 2, h / 2, side, w, h)
    if abs(h - w) < 2:
        return centre
    energy = filters.sobel(gray)
    profile = energy.sum(axis=0 if w > h else 1)  # energy per column (landscape) or row
    windows = np.convolve(profile, np.ones(side), mode="valid")  # energy of each square
    best = int(np.argmax(windows))
    middle = (len(profile) - side) // 2
    if windows[best] < SALIENCY_GAIN * windows[middle]:
        return centre
    return Box(best, 0, best + side, side) if w > h else Box(0, best, side, best + side)


def crop_strip(crops: Sequence[tuple[Image.Image, Box]], thumb: int = STRIP_THUMB) -> bytes:
    """One JPEG with each photo's crop side by side: what training will see. Each box is in
    its own image's pixels (a small analysis copy is plenty for thumbnails)."""
    strip = Image.new("RGB", (thumb * max(1, len(crops)), thumb), (255, 255, 255))
    for n, (image, box) in enumerate(crops):
        tile = image.crop((box[0], box[1], box[2], box[3])).resize((thumb, thumb), Image.Resampling.BILINEAR)
        strip.paste(tile, (n * thumb, 0))
    out = io.BytesIO()
    strip.save(out, format="JPEG", quality=80)
    return out.getvalue()
