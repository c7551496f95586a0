"""A cheap look at the picture while it is being made: latents -> RGB by a linear map.

A full VAE decode per progress update would cost as much as a denoising step; a 4x3
matrix gives a blurry but recognisable thumbnail for the chat job card instead.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

# Least-squares fit of SD 1.x latent channels to RGB, as published by several SD UIs
# (data, not code). Rows: latent channels; columns: R, G, B.
SD1_LATENT_RGB = np.array(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    dtype=np.float32,
)


def latent_preview(latent: np.ndarray, max_side: int = 128, quality: int = 60) -> str:
    """A base64 JPEG (no data: prefix) approximating the image of one latent (C, H, W)."""
    if latent.ndim != 3 or latent.shape[0] != SD1_LATENT_RGB.shape[0]:
        raise ValueError(f"expected a 4-channel latent (4, H, W), got shape {latent.shape}")
    rgb = np.einsum("chw,ck->hwk", latent.astype(np.float32), SD1_LATENT_RGB)
    pixels = np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")
