"""One resident diffusion pipeline per base model per worker process.

Loaded by the first task that needs it (never at import or fork time) and kept: the
text encoder, UNet and VAE stay on the device, people's LoRAs are merged into the
weights and swapped by value (`resident_adapters`), and the img2img pipeline for
variations and upscales is a view over the very same modules (`from_pipe`), so it
costs no memory and no load time. `generate` draws one batch with it; the job around
it (checks, storage, rows) is `gpu_worker.sampling`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image as PILImage

from core.sample_request import SampleRequest
from core.settings import Settings
from core.storage import storage_from_settings
from gpu_worker.lora_cache import AdapterRef, LoraDiskCache
from gpu_worker.model_fetch import local_base_model
from gpu_worker.resident_adapters import ResidentAdapters

log = logging.getLogger(__name__)


def pick_device() -> tuple[torch.device, torch.dtype]:
    """The GPU in fp16 when there is one (what SD 1.x inference is tuned for), else CPU fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def compile_wanted(settings: Settings, device: torch.device) -> bool:
    """`DREAMBOT_SAMPLE_COMPILE`: auto compiles on a GPU only; a CPU stays eager unless asked."""
    mode = settings.sample_compile
    if mode in ("on", True):
        return True
    if mode in ("off", False):
        return False
    return device.type == "cuda"


def tune_for_gpu(pipe: Any) -> None:
    """Inference speed-ups for a pipeline on CUDA. Diffusers already uses PyTorch SDPA
    attention; channels_last helps the convolutions, and the same few shapes come back
    every batch, so cuDNN may time its algorithm choices once per shape."""
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler of kind `name` built from the model's own scheduler config."""
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}")


@dataclass
class Resident:
    """A loaded base model and everything kept with it (one job at a time: `lock`)."""

    base_model: str
    pipe: StableDiffusionPipeline
    device: torch.device
    dtype: torch.dtype
    adapters: ResidentAdapters
    safety_checker: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _img2img: StableDiffusionImg2ImgPipeline | None = None

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def img2img(self) -> StableDiffusionImg2ImgPipeline:
        if self._img2img is None:
            self._img2img = StableDiffusionImg2ImgPipeline.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def prepare(self, pipe: Any, scheduler: str, settings: Settings) -> Any:
        """`pipe` (txt2img or img2img) set up for one job: its scheduler, the NSFW filter."""
        pipe.scheduler = make_scheduler(scheduler, self.pipe.scheduler.config)
        pipe.safety_checker = self.safety_checker if settings.nsfw_filter else None
        return pipe

    def use_adapters(self, refs: Sequence[AdapterRef], settings: Settings) -> None:
        """Activate exactly `refs` (the job's subjects) under these settings' limits."""
        self.adapters.capacity = settings.resident_adapters
        self.adapters.activate(refs)


def disk_cache(settings: Settings) -> LoraDiskCache:
    """The LoRA disk cache of these settings (cheap; the folder is the state)."""
    root = settings.lora_cache_dir or (Path(settings.data_dir) / "lora-cache")
    return LoraDiskCache(root, storage_from_settings(settings), settings.lora_cache_bytes)


SLICE_ABOVE_PIXELS = 4 * 512 * 512  # a batch's pixels beyond which the VAE decodes image by image
# One graph per image size and batch (dynamic=False: static shapes compile to the fastest
# kernels, and a worker sees few sizes). Tests swap the backend for a fast one.
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": False}
_residents: dict[str, Resident] = {}
_load_lock = threading.Lock()


def get_resident(settings: Settings) -> Resident:
    """The resident pipeline for `settings.base_model`, loading it on first use."""
    key = settings.base_model
    with _load_lock:
        resident = _residents.get(key)
        if resident is None:
            resident = _load(settings)
            _residents[key] = resident
        return resident


def drop_residents() -> None:
    """Forget every resident pipeline (tests; a worker never needs to)."""
    with _load_lock:
        _residents.clear()


def _load(settings: Settings) -> Resident:
    device, dtype = pick_device()
    log.info("loading %s on %s (%s)", settings.base_model, device, dtype)
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if not settings.nsfw_filter:  # no checker at all: nothing to run, nothing to load
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    # The name (`storage:models/sd15`) stays the key and what subjects record; only the
    # load reads the host's local copy.
    pipe = StableDiffusionPipeline.from_pretrained(local_base_model(settings.base_model, settings), **kwargs)
    # The model's own scheduler config is kept for `make_scheduler`; `from_pretrained`
    # gives the checkpoint's default (PNDM for SD 1.5), replaced per request.
    pipe.set_progress_bar_config(disable=True)
    # Inference only. Reading an adapter freezes what it wraps, so freezing everything now
    # also keeps a compiled UNet's guards (they check requires_grad) true across swaps.
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.requires_grad_(False)
    if settings.nsfw_filter and getattr(pipe, "safety_checker", None) is None:
        log.warning("DREAMBOT_NSFW_FILTER is on but %s has no safety checker; images are not checked",
                    settings.base_model)  # fmt: skip
    pipe.to(device)
    if device.type == "cuda":
        tune_for_gpu(pipe)
    pipe.vae.enable_tiling()  # big images decode in tiles: no OOM spike at 2x upscales
    if compile_wanted(settings, device):
        # In place (the module stays a UNet for diffusers). Adapters only change weight
        # values, never the module tree, so people swap without a recompile.
        pipe.unet.compile(**COMPILE_OPTIONS)
    return Resident(
        base_model=settings.base_model,
        pipe=pipe,
        device=device,
        dtype=dtype,
        adapters=ResidentAdapters(pipe, settings.resident_adapters),
        safety_checker=pipe.safety_checker,
    )


def warm(resident: Resident, settings: Settings, report: Callable[[str], None]) -> dict[str, Any]:
    """Warm the resident pipeline before the first job; returns what was warmed."""
    return {"model": settings.base_model, "device": str(resident.device), "warmed": ["base model"]}


@dataclass(frozen=True)
class Source:
    """An earlier image to vary or upscale."""

    image: PILImage.Image
    prompt: str


StepReporter = Callable[[int, int, Any], None]  # (step, total, latents)


def generate(
    resident: Resident,
    settings: Settings,
    req: SampleRequest,
    prompt: str,
    seeds: list[int],
    source: Source | None,
    report: StepReporter | None = None,
) -> tuple[list[PILImage.Image], list[bool], int]:
    """Make `req.n` images in one batch. Returns the images, which the safety checker
    flagged, and how many denoising steps ran. Call with `resident.lock` held."""
    steps = req.steps
    common: dict[str, Any] = dict(
        prompt=prompt,
        negative_prompt=req.negative_prompt or None,
        num_images_per_prompt=req.n,
        guidance_scale=req.guidance_scale,
        # One CPU generator per image: image i depends on seeds[i] only, on any device.
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type="pil",
    )
    if source is None:
        pipe = resident.prepare(resident.pipe, req.scheduler, settings)
        size = (req.width or resident.native_size, req.height or resident.native_size)
        common.update(width=size[0], height=size[1])
    else:
        pipe = resident.prepare(resident.img2img, req.scheduler, settings)
        if req.upscale_of is not None:
            size = (source.image.width * 2, source.image.height * 2)
        else:
            size = (req.width or source.image.width, req.height or source.image.height)
        strength = req.effective_strength
        steps = max(steps, math.ceil(1 / strength))  # img2img runs int(steps * strength) steps: at least one
        common.update(image=source.image.resize(size, PILImage.Resampling.LANCZOS), strength=strength)
    # Up to four native-size images decode as one batch (faster); more, one at a time.
    if req.n * size[0] * size[1] > SLICE_ABOVE_PIXELS:
        pipe.vae.enable_slicing()
    else:
        pipe.vae.disable_slicing()

    def on_step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if report is not None:
            report(i + 1, p.num_timesteps, kwargs["latents"])
        return kwargs

    with torch.inference_mode():
        out = pipe(num_inference_steps=steps, callback_on_step_end=on_step_end, **common)
    flagged = list(out.nsfw_content_detected or [False] * len(out.images))
    return list(out.images), [bool(f) for f in flagged], int(pipe.num_timesteps)
