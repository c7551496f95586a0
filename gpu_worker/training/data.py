"""Turning photos into training tensors: centre crop to a square, resize, scale to [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps


def square(image: Image.Image, resolution: int) -> Image.Image:
    """Centre crop to a square and resize: the subject keeps its shape (no stretching)."""
    return ImageOps.fit(
        image.convert("RGB"), (resolution, resolution), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5)
    )


def to_tensor(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """N×3×R×R float32 in [-1, 1]."""
    arrays = [np.asarray(square(im, resolution), dtype=np.float32) for im in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch / 127.5 - 1.0


def with_flips(pixels: torch.Tensor, flip: bool) -> torch.Tensor:
    """N×V×3×R×R: V=2 (as taken, mirrored) when flips are on, else V=1."""
    variants = [pixels, torch.flip(pixels, dims=[3])] if flip else [pixels]
    return torch.stack(variants, dim=1)
