"""Test pictures at the end of a training, made with the weights just trained.

The pipeline is assembled from the training's own modules: no second load of the base
model, no round trip through the saved file, and the very weights in memory (LoRA or
full fine-tune alike). It samples with DPM-Solver++ under the training's autocast, then
decodes outside autocast in the VAE's own precision (the SD VAE can overflow in fp16).
With DREAMBOT_NSFW_FILTER on, the base model's safety checker looks at each picture and
a flagged one is dropped, as in sampling; a model without a checker is used unchecked
(with a warning), also as in sampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from gpu_worker.pipelines import make_scheduler
from gpu_worker.training.trainer import Trainer

log = logging.getLogger(__name__)

SCHEDULER = "dpmpp_2m_karras"


@dataclass
class Validation:
    images: list[tuple[Image.Image, int]]  # (picture, seed), flagged ones left out
    blocked: int
    safety_checked: bool


def _safety_checker(base_model: str) -> tuple[Any, Any]:
    """The base model's safety checker and its feature extractor, or (None, None)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(base_model, subfolder="safety_checker")
        extractor = CLIPImageProcessor.from_pretrained(base_model, subfolder="feature_extractor")
    except (OSError, ValueError) as exc:
        log.warning("%s has no safety checker (%s); validation images are not checked", base_model, exc)
        return None, None
    return checker, extractor


def make_validation_images(
    trainer: Trainer,
    prompt: str,
    *,
    count: int,
    steps: int,
    guidance_scale: float,
    nsfw_filter: bool,
) -> Validation:
    """`count` pictures of `prompt`, image i from seed `cfg.seed + i`."""
    from diffusers import StableDiffusionPipeline

    comps, device, cfg = trainer.comps, trainer.device, trainer.cfg
    trainer.release_optimizer()
    unet = trainer.acc.unwrap_model(trainer.unet_p)
    te = trainer.acc.unwrap_model(trainer.te_p) if trainer.te_p is not None else comps.text_encoder
    checker, extractor = _safety_checker(comps.model_path) if nsfw_filter else (None, None)
    pipe = StableDiffusionPipeline(
        vae=comps.vae,
        text_encoder=te,
        tokenizer=comps.tokenizer,
        unet=unet,
        scheduler=make_scheduler(SCHEDULER, comps.noise_scheduler.config),
        safety_checker=checker,
        feature_extractor=extractor,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)  # moves without casting: every module keeps the dtype it trained in
    unet.eval()
    te.eval()
    seeds = [cfg.seed + i for i in range(count)]
    size = cfg.resolution or comps.native_resolution
    with torch.no_grad():
        with trainer.acc.autocast():
            latents = pipe(
                [prompt] * count,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                output_type="latent",
            ).images
        vae = comps.vae
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        flagged: list[bool] = [False] * count
        if checker is not None:
            pixels, nsfw = pipe.run_safety_checker(pixels.float(), device, torch.float32)
            flagged = [bool(f) for f in nsfw]
        pictures = pipe.image_processor.postprocess(pixels.float(), output_type="pil")
    kept = [(im, seed) for im, seed, bad in zip(pictures, seeds, flagged, strict=True) if not bad]
    for module in (comps.vae, comps.text_encoder, checker):
        if module is not None:
            module.to("cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Validation(kept, sum(flagged), checker is not None)
