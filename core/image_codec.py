"""Image files: PNG with the generation parameters in text chunks, and re-encoding to
fit a platform's upload limit. Pillow only, so the bot's delivery can use it too.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

# Keys are plain tEXt/iTXt chunk names; "parameters" is the one line other SD tools read.
META_PREFIX = "dreambot:"


def png_with_metadata(image: Image.Image, meta: Mapping[str, object]) -> bytes:
    """Encode `image` as PNG carrying each `meta` item as a text chunk (and a summary line)."""
    info = PngImagePlugin.PngInfo()
    for key, value in meta.items():
        info.add_itxt(META_PREFIX + key, "" if value is None else str(value))
    info.add_itxt("parameters", _summary(meta))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _summary(meta: Mapping[str, object]) -> str:
    # The widely used "prompt\nNegative prompt: ...\nSteps: ..., Seed: ..." layout.
    lines = [str(meta.get("prompt", ""))]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    rest = ", ".join(
        f"{label}: {meta[key]}"
        for key, label in (
            ("steps", "Steps"),
            ("scheduler", "Sampler"),
            ("guidance_scale", "CFG scale"),
            ("seed", "Seed"),
            ("size", "Size"),
            ("base_model", "Model"),
            ("subjects", "Subjects"),
        )
        if meta.get(key) not in (None, "")
    )
    if rest:
        lines.append(rest)
    return "\n".join(lines)


def read_png_metadata(data: bytes) -> dict[str, str]:
    """The dreambot text chunks of a PNG, without the prefix."""
    with Image.open(io.BytesIO(data)) as im:
        text = dict(getattr(im, "text", {}) or {})
    return {k.removeprefix(META_PREFIX): v for k, v in text.items() if k.startswith(META_PREFIX)}


@dataclass(frozen=True)
class Encoded:
    data: bytes
    format: str  # "png" | "webp" | "jpeg"
    width: int
    height: int

    @property
    def mime(self) -> str:
        return f"image/{self.format}"


def fit_under(data: bytes, max_bytes: int, min_side: int = 64) -> Encoded:
    """Return the image in `data` as-is if it fits `max_bytes`, else re-encoded (WebP,
    then JPEG, lowering quality, then shrinking) until it does.

    Raises ValueError when even a `min_side` thumbnail does not fit.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        fmt = (im.format or "png").lower()
        if len(data) <= max_bytes:
            return Encoded(data, fmt, im.width, im.height)
        image = im.convert("RGB")
    while True:
        for fmt, qualities in (("webp", (90, 80, 65, 50)), ("jpeg", (88, 75, 60, 45))):
            for quality in qualities:
                buf = io.BytesIO()
                image.save(buf, format=fmt.upper(), quality=quality)
                if buf.tell() <= max_bytes:
                    return Encoded(buf.getvalue(), fmt, image.width, image.height)
        if min(image.size) <= min_side:
            raise ValueError(f"cannot fit the image under {max_bytes} bytes")
        scale = 0.75
        size = (max(min_side, int(image.width * scale)), max(min_side, int(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
