"""Photo intake: the one check every path (chat, agent, CLI, training) puts photos through.

`validate_photo` decodes the bytes fully (so a truncated upload is caught here, not
halfway through a training), applies the EXIF orientation and returns an RGB image, or
raises `PhotoRejected` with a sentence a person can act on. Sizes are checked from the
header before any pixel is decoded, so a decompression bomb costs nothing
(`check_pixel_count` does only that, for files that are decoded elsewhere).
`store_subject_photos` keeps accepted photos as normalised JPEGs plus `Photo` rows,
decoding one photo at a time. Byte limits while files arrive live in `core.uploads`.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError
from sqlalchemy import func, select

from core.db import session_scope
from core.errors import UserFacingError
from core.models import Photo
from core.settings import Settings
from core.storage import storage_from_settings

# Pillow allocates pixels in blocks (16 MB by default). Blocks above glibc's largest mmap
# threshold (32 MB) are mapped and unmapped on their own, so a big photo's pixels go back
# to the system once freed instead of staying in a worker thread's malloc arena. Small
# images still take only what they need. An operator's PILLOW_BLOCK_SIZE wins.
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(64 * 1024 * 1024)

MIN_SIDE = 256  # below this a photo teaches the model blur, whatever the resolution
MAX_PIXELS = 50_000_000  # 50 MP: more than any phone camera; larger means a crafted file
MAX_BYTES = 40 * 1024 * 1024
ALLOWED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP"}
ALLOWED_TEXT = "JPEG, PNG or WebP"
JPEG_QUALITY = 95

# File signatures of things people send by mistake, for a precise message.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive (or an Office document)"),
    (b"ftypheic", 4, "a HEIC photo"),
    (b"ftypheix", 4, "a HEIC photo"),
    (b"ftypmif1", 4, "a HEIF photo"),
    (b"ftypavif", 4, "an AVIF image"),
    (b"ftypisom", 4, "a video"),
    (b"ftypmp42", 4, "a video"),
    (b"ftypqt  ", 4, "a video"),
    (b"<svg", 0, "an SVG drawing"),
    (b"<?xml", 0, "an XML/SVG file"),
)


class PhotoRejected(UserFacingError):
    """A photo we cannot train on; the message names the file and says why."""

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"{filename}: {reason}")
        self.filename = filename
        self.reason = reason


def _sniff(data: bytes) -> str | None:
    head = data[:64].lstrip()
    for sig, offset, what in _SIGNATURES:
        if head[offset : offset + len(sig)].lower() == sig.lower():
            return what
    return None


def _open(data: bytes, name: str) -> Image.Image:
    """The image with only its header read (no pixel decoded yet), or `PhotoRejected`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoRejected(name, "the image has far too many pixels to be a photo") from None
    except UnidentifiedImageError:
        what = _sniff(data)
        if what in ("a HEIC photo", "a HEIF photo"):
            raise PhotoRejected(
                name, f"this is {what}, which we cannot read; please send it as {ALLOWED_TEXT}"
            ) from None
        if what:
            raise PhotoRejected(name, f"this is {what}, not a photo; please send {ALLOWED_TEXT}") from None
        raise PhotoRejected(name, f"this is not an image we can read; please send {ALLOWED_TEXT}") from None
    except OSError as exc:
        raise PhotoRejected(name, f"the image is damaged and cannot be opened ({exc})") from None


def _check_size(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise PhotoRejected(
            name,
            f"the image is {width}×{height} pixels, more than {max_pixels // 1_000_000} megapixels; "
            "please send a smaller copy",
        )


def check_pixel_count(data: bytes, filename: str, *, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image whose header claims too many pixels, decoding nothing. Files that are
    not images pass: this guards whatever decodes them later (chat photos go to the model)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise PhotoRejected(filename or "photo", "the image has far too many pixels to be a photo") from None
    except (UnidentifiedImageError, OSError):
        return
    with image:
        _check_size(image, filename or "photo", max_pixels)


def validate_photo(
    data: bytes, filename: str, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Return the decoded, EXIF-upright RGB image, or raise `PhotoRejected`.

    Memory: one decoded copy of the pixels at a time (a 49 MP photo is ~150 MB decoded),
    so callers handling several photos should take them one by one."""
    name = filename or "photo"
    if not data:
        raise PhotoRejected(name, "the file is empty")
    if len(data) > MAX_BYTES:
        raise PhotoRejected(name, f"the file is larger than {MAX_BYTES // 2**20} MB")
    image = _open(data, name)
    fmt = image.format or "?"
    if fmt not in ALLOWED_FORMATS:
        raise PhotoRejected(name, f"{fmt} images are not supported; please send {ALLOWED_TEXT}")
    _check_size(image, name, max_pixels)
    width, height = image.size
    if min(width, height) < min_side:
        raise PhotoRejected(
            name,
            f"the image is only {width}×{height} pixels; please send one at least "
            f"{min_side} pixels on each side",
        )
    try:
        image.load()  # decode every pixel now: truncation surfaces here
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        reason = "the file is cut off (truncated)" if "truncat" in msg.lower() else "the image is damaged"
        raise PhotoRejected(name, f"{reason}; please send the photo again") from None
    # In place: a copy only when the photo really has to turn. A broken EXIF block is not
    # worth rejecting the photo for.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return _to_rgb(image)


def check_photo(data: bytes, filename: str, *, min_side: int = MIN_SIDE) -> None:
    """`validate_photo` without keeping the pixels: refuse a bad photo, release a good one."""
    validate_photo(data, filename, min_side=min_side).close()


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white (a cut-out product shot stays a cut-out)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def preview_rgb(data: bytes, max_side: int, *, reducing_gap: float = 2.0) -> Image.Image:
    """An upright RGB copy of the image in `data`, longest side at most `max_side`, decoding
    only what that needs: a JPEG at a reduced scale, anything else reduced right after its
    one decode (a 49 MP photo costs one decoded copy, briefly, not several). Raises what
    Pillow raises for a file it cannot read. `reducing_gap`: a JPEG is decoded at the
    smallest scale still this many times the target size (1.0: the cheapest, for measuring)."""
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
        image.load()
        with contextlib.suppress(Exception):  # as in validate_photo: broken EXIF is no reason
            ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)


def encode_jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


@dataclass(frozen=True)
class StoredPhoto:
    id: int
    storage_key: str
    sha256: str
    width: int
    height: int


def photo_key(subject_id: int, n: int) -> str:
    return f"subjects/{subject_id}/photos/{n}.jpg"


def store_subject_photos(
    settings: Settings,
    subject_id: int,
    photos: Iterable[tuple[bytes, str]],
    *,
    min_side: int = MIN_SIDE,
    checked: bool = False,
    crops: Sequence[Sequence[int] | None] = (),
) -> list[StoredPhoto]:
    """Validate every photo first (all or nothing), then store each as an upright JPEG
    under `subjects/{id}/photos/{n}.jpg` with a `Photo` row. Raises `PhotoRejected` for
    the first bad one, before anything is stored. Photos are decoded one at a time and
    released before the next, so memory stays at one photo's pixels whatever the count.
    `checked`: the caller already put every photo through `check_photo`. `crops`: each
    photo's square training crop (the photo coach's), kept on its row."""
    photos = list(photos)
    for data, name in [] if checked else photos:
        check_photo(data, name, min_side=min_side)
    boxes = [list(box) if box else None for box in crops] + [None] * (len(photos) - len(crops))
    storage = storage_from_settings(settings)
    stored: list[StoredPhoto] = []
    with session_scope(settings) as session:
        count = session.scalar(select(func.count(Photo.id)).where(Photo.subject_id == subject_id)) or 0
        taken = set(session.scalars(select(Photo.storage_key).where(Photo.subject_id == subject_id)))
        n = count
        for (photo, name), box in zip(photos, boxes, strict=False):
            while photo_key(subject_id, n) in taken:
                n += 1
            key = photo_key(subject_id, n)
            image = validate_photo(photo, name, min_side=min_side)
            try:
                data, width, height = encode_jpeg(image), image.width, image.height
            finally:
                image.close()  # free the pixels now, not when the next photo is decoded
            digest = storage.put(key, data)
            row = Photo(
                subject_id=subject_id,
                storage_key=key,
                sha256=digest,
                bytes=len(data),
                width=width,
                height=height,
                crop=box,
            )
            session.add(row)
            session.flush()
            stored.append(StoredPhoto(row.id, key, digest, width, height))
            taken.add(key)
    return stored
