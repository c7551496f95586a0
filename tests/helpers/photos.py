"""Test photos made on the spot: valid JPEGs, and the kinds of bad upload people send."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image


def jpeg(seed: int = 0, size: int = 512) -> bytes:
    """A valid photo-sized JPEG with some structure (not a flat colour): sharp, well lit,
    with film grain, and big enough that the photo coach has nothing to say about it."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(40, 216) for _ in range(3)))
    for _ in range(12 * size * size // (320 * 320)):  # as busy as at 320 pixels
        x, y = rng.randrange(size), rng.randrange(size)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(size, x + 60), min(size, y + 60)))
    grain = np.random.default_rng(seed).integers(-16, 17, (size, size, 1), dtype=np.int16)
    image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def face_jpeg(seed: int = 0, size: int = 512) -> bytes:
    """A photo of one person (scikit-image's astronaut), framed differently for each seed
    (0–5 are all different to the photo coach): one face, no copies."""
    k = seed % 6
    left, top = (0, 0, 72, 36, 18, 60)[k], (0, 48, 0, 30, 60, 12)[k]
    side = 512 - max(left, top) - 16 * (seed % 3)
    image = _astronaut().crop((left, top, left + side, top + side))
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    if seed % 2:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def png(seed: int = 0, size: int = 64) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def corrupt_jpeg() -> bytes:
    data = jpeg(99)
    return data[: len(data) // 3]  # truncated mid-scan


def huge_file(megabytes: int = 60) -> bytes:
    return jpeg(7) + b"\0" * (megabytes * 1024 * 1024)


def big_png(seed: int = 0, side: int = 7000) -> bytes:
    """A `side`×`side` PNG (49 MP by default: under the 50 MP limit) that is small on the wire
    (~160 KB: flat colour with a few blocks) and ~150 MB once decoded."""
    rng = random.Random(seed)
    image = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
    for i in range(12):
        x, y = rng.randrange(side - 600), rng.randrange(side - 600)
        image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 300 + 20 * i, y + 400))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=6)
    return out.getvalue()
