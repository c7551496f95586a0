"""Photo intake: every bad upload gets a reason a person understands; good ones come out upright RGB."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from sqlalchemy import select

from core.db import session_scope
from core.models import Photo, Subject, User
from core.photos import PhotoRejected, store_subject_photos, validate_photo
from core.settings import Settings
from core.storage import sha256_bytes, storage_from_settings


def encode(image: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims `width`×`height` (a decompression bomb's trick)."""
    data = bytearray(encode(Image.new("RGB", (8, 8), "red"), "PNG"))
    ihdr = 8 + 8  # signature, then length + type of the first chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


GOOD = encode(Image.new("RGB", (400, 300), (10, 120, 200)))


def rejected(data: bytes, name: str = "rex.jpg") -> str:
    with pytest.raises(PhotoRejected) as info:
        validate_photo(data, name)
    assert str(info.value).startswith(f"{name}: ") and info.value.filename == name
    return info.value.reason


def test_a_good_photo_is_returned_as_rgb() -> None:
    image = validate_photo(GOOD, "rex.jpg")
    assert (image.mode, image.size) == ("RGB", (400, 300))
    webp = validate_photo(encode(Image.new("RGB", (300, 300)), "WEBP"), "a.webp")
    assert webp.size == (300, 300)


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (400, 300), "white")
    image.paste((255, 0, 0), (0, 0, 400, 30))  # a red band along the top as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    upright = validate_photo(encode(image, exif=exif.tobytes()), "phone.jpg")
    assert upright.size == (300, 400)
    r, g, _ = upright.getpixel((295, 200))  # the band is now down the right side
    assert r > 200 and g < 60


def test_transparent_png_becomes_white_not_black() -> None:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    out = validate_photo(encode(image, "PNG"), "cutout.png")
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255)


def test_not_an_image() -> None:
    assert "not an image" in rejected(b"hello, this is a text file" * 10, "notes.jpg")
    assert "empty" in rejected(b"")


def test_a_pdf_named_jpg() -> None:
    assert "PDF" in rejected(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 20, "scan.jpg")


def test_heic_gets_a_specific_hint() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200
    reason = rejected(heic, "IMG_0001.HEIC")
    assert "HEIC" in reason and "JPEG" in reason


def test_truncated_and_corrupt() -> None:
    big = encode(Image.effect_noise((600, 600), 60).convert("RGB"), quality=90)
    assert "truncated" in rejected(big[: len(big) // 2])
    corrupt = big[:200] + bytes(range(256)) * 40
    reason = rejected(corrupt)
    assert "damaged" in reason or "truncated" in reason


def test_too_small() -> None:
    assert "only 1×1 pixels" in rejected(encode(Image.new("RGB", (1, 1)), "PNG"), "dot.png")
    assert "at least 256" in rejected(encode(Image.new("RGB", (600, 200))))


def test_decompression_bombs_are_refused_before_decoding() -> None:
    assert "far too many pixels" in rejected(png_claiming(30_000, 30_000), "bomb.png")
    assert "more than 50 megapixels" in rejected(png_claiming(8_000, 8_000), "big.png")


def test_unsupported_format() -> None:
    assert "GIF images are not supported" in rejected(encode(Image.new("RGB", (300, 300)), "GIF"), "a.gif")
    assert "TIFF" in rejected(encode(Image.new("RGB", (300, 300)), "TIFF"), "a.tif")


def _subject(settings: Settings) -> int:
    with session_scope(settings) as s:
        user = User(platform="test", platform_user_id="p1")
        s.add(user)
        s.flush()
        subject = Subject(owner_id=user.id, name="rex", token="sks", class_noun="dog", base_model="m")
        s.add(subject)
        s.flush()
        return subject.id


def test_store_subject_photos_all_or_nothing(sqlite_settings: Settings) -> None:
    sid = _subject(sqlite_settings)
    storage = storage_from_settings(sqlite_settings)
    with pytest.raises(PhotoRejected, match=r"b\.png"):
        store_subject_photos(sqlite_settings, sid, [(GOOD, "a.jpg"), (b"nope", "b.png")])
    assert list(storage.list(f"subjects/{sid}/")) == []

    png = encode(Image.new("RGB", (300, 500), "green"), "PNG")
    stored = store_subject_photos(sqlite_settings, sid, [(GOOD, "a.jpg"), (png, "b.png")])
    more = store_subject_photos(sqlite_settings, sid, [(GOOD, "c.jpg")])
    keys = [p.storage_key for p in stored + more]
    assert keys == [f"subjects/{sid}/photos/{n}.jpg" for n in range(3)]
    with session_scope(sqlite_settings) as s:
        rows = list(s.scalars(select(Photo).where(Photo.subject_id == sid).order_by(Photo.id)))
        assert [r.storage_key for r in rows] == keys
        assert (rows[1].width, rows[1].height) == (300, 500)
        for row in rows:
            data = storage.read_bytes(row.storage_key)
            assert row.sha256 == sha256_bytes(data) and row.bytes == len(data)
            assert Image.open(io.BytesIO(data)).format == "JPEG"
