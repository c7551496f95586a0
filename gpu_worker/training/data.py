"""Turning photos and prompts into training tensors, once per run.

Photos: centre crop to a square, resize, scale to [-1, 1], then through the VAE once
(each step draws a fresh sample from the kept latent distribution). Prompts: token ids
on the training device.
"""

from __future__ import annotations

from typing import Any

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


@torch.no_grad()
def latent_distribution(
    vae: Any, images: list[Image.Image], resolution: int, flip: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (fp32, on `device`) of each image's latent distribution: N×V×C×h×w (V: flips)."""
    pixels = with_flips(to_tensor(images, resolution), flip)
    n, v = pixels.shape[:2]
    means, stds = [], []
    for chunk in pixels.flatten(0, 1).split(4):
        dist = vae.encode(chunk.to(device, dtype=vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means).unflatten(0, (n, v)), torch.cat(stds).unflatten(0, (n, v))


def token_ids(tokenizer: Any, prompt: str, device: torch.device) -> torch.Tensor:
    """1×L token ids, padded to the text encoder's length."""
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device)
