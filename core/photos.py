"""Photo intake: the one check every path (chat, agent, CLI, training) puts photos through.

`validate_photo` decodes the bytes fully (so a truncated upload is caught here, not
halfway through a training), applies the EXIF orientation and returns an RGB image, or
raises `PhotoRejected` with a sentence a person can act on. Sizes are checked from the
header before any pixel is decoded, so a decompression bomb costs nothing.
`store_subject_photos` keeps accepted photos as normalised JPEGs plus `Photo` rows.
"""

from __future__ import annotations

import io
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


def validate_photo(
    data: bytes, filename: str, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Return the decoded, EXIF-upright RGB image, or raise `PhotoRejected`."""
    name = filename or "photo"
    if not data:
        raise PhotoRejected(name, "the file is empty")
    if len(data) > MAX_BYTES:
        raise PhotoRejected(name, f"the file is larger than {MAX_BYTES // 2**20} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
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
    fmt = image.format or "?"
    if fmt not in ALLOWED_FORMATS:
        raise PhotoRejected(name, f"{fmt} images are not supported; please send {ALLOWED_TEXT}")
    width, height = image.size
    if width * height > max_pixels:
        raise PhotoRejected(
            name,
            f"the image is {width}×{height} pixels, more than {max_pixels // 1_000_000} megapixels; "
            "please send a smaller copy",
        )
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
    try:
        upright = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block is not worth rejecting the photo for
        upright = image
    return _to_rgb(upright)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white (a cut-out product shot stays a cut-out)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


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
    crops: Sequence[Sequence[int] | None] = (),
) -> list[StoredPhoto]:
    """Validate every photo first (all or nothing), then store each as an upright JPEG
    under `subjects/{id}/photos/{n}.jpg` with a `Photo` row. Raises `PhotoRejected` for
    the first bad one, before anything is stored. `crops`: each photo's square training
    crop (the photo coach's), kept on its row."""
    images = [(validate_photo(data, name, min_side=min_side), name) for data, name in photos]
    boxes = [list(box) if box else None for box in crops] + [None] * (len(images) - len(crops))
    storage = storage_from_settings(settings)
    stored: list[StoredPhoto] = []
    with session_scope(settings) as session:
        count = session.scalar(select(func.count(Photo.id)).where(Photo.subject_id == subject_id)) or 0
        taken = set(session.scalars(select(Photo.storage_key).where(Photo.subject_id == subject_id)))
        n = count
        for (image, _name), box in zip(images, boxes, strict=False):
            while photo_key(subject_id, n) in taken:
                n += 1
            key = photo_key(subject_id, n)
            data = encode_jpeg(image)
            digest = storage.put(key, data)
            row = Photo(
                subject_id=subject_id,
                storage_key=key,
                sha256=digest,
                bytes=len(data),
                width=image.width,
                height=image.height,
                crop=box,
            )
            session.add(row)
            session.flush()
            stored.append(StoredPhoto(row.id, key, digest, image.width, image.height))
            taken.add(key)
    return stored
