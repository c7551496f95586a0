"""Loading the base model's parts and choosing precision for a training run."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The parts of a Stable Diffusion 1.x/2.x checkpoint that training touches."""

    base_model: str
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    path: str | None = None  # where the parts were read from, when not `base_model` itself

    @property
    def model_path(self) -> str:
        """What `from_pretrained` reads for more parts of this model (the safety checker)."""
        return self.path or self.base_model

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """The image size the model was trained at (512 for SD 1.5, 64 for the tiny test model)."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, list | tuple) else size
        return int(size) * self.vae_scale_factor


def load_components(base_model: str, settings: Settings | None = None) -> Components:
    """Load tokenizer, text encoder, VAE, UNet (fp32) and a DDPM noise scheduler.

    `base_model` is the name subjects record; a `storage:` name is read from this host's
    model cache (`settings`, else the process's settings), so subjects stay portable."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from core.errors import UserFacingError
    from gpu_worker.model_fetch import local_base_model

    path = local_base_model(base_model, settings)  # hub: downloaded once; storage: copied once
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise UserFacingError(
            f"The base model {base_model!r} could not be loaded (is DREAMBOT_BASE_MODEL a Stable "
            f"Diffusion 1.x/2.x folder or hub id available offline?): {exc}"
        ) from None
    return Components(base_model, tokenizer, text_encoder, vae, unet, noise_scheduler, path=path)


def pick_precision(requested: str, device: torch.device) -> str:
    """`auto`: bf16 where the GPU supports it, else fp16 (with loss scaling); fp32 on CPU."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def dtype_for(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def want_8bit_adam(setting: str, method: str, device: torch.device) -> bool:
    """8-bit Adam saves memory only where optimizer state is large (full fine-tune) and
    needs bitsandbytes on CUDA; `on` without them is a configuration error."""
    available = device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    if setting == "on":
        if not available:
            from core.train_config import TrainConfigError

            raise TrainConfigError("use_8bit_adam=on needs the bitsandbytes package and a CUDA GPU")
        return True
    return setting == "auto" and available and method == "full"


def make_optimizer(
    params: list[dict[str, Any]], *, eight_bit: bool, device: torch.device, **kwargs: Any
) -> torch.optim.Optimizer:
    """AdamW, fused: one kernel per group. Its learning rates are tensors on the device that
    the scheduler updates in place, so a CUDA graph of the step sees each new rate (and an
    eager run computes exactly what a graphed one does)."""
    if eight_bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    params = [{**g, "lr": torch.tensor(float(g["lr"]), device=device)} for g in params]
    return torch.optim.AdamW(params, fused=True, capturable=device.type == "cuda", **kwargs)
