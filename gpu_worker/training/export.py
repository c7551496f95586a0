"""Writing the trained result: diffusers-format LoRA (+ a kohya/A1111 copy) or fp16 weights.

- LoRA: `StableDiffusionPipeline.save_lora_weights` layout, so `pipe.load_lora_weights(file)`
  loads it; plus `convert_state_dict_to_kohya` for AUTOMATIC1111 / ComfyUI.
- Full fine-tune: one fp16 safetensors file, keys `unet.<name>` (and `text_encoder.<name>`
  when the text encoder was trained), no optimizer state. Load with
  `load_full_weights(pipe, path)`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from gpu_worker.training.trainer import Trainer

LORA_FILE = "pytorch_lora_weights.safetensors"


def _metadata(model: Any) -> dict[str, Any] | None:
    config = getattr(model, "peft_config", {}).get("default")
    return config.to_dict() if config is not None else None


def write_lora(trainer: Trainer, folder: Path) -> tuple[Path, Path]:
    """Write the diffusers-format and kohya-format LoRA files into `folder`."""
    unet = trainer.acc.unwrap_model(trainer.unet_p)
    te = trainer.acc.unwrap_model(trainer.te_p) if trainer.te_p is not None else None
    # contiguous: conv LoRA factors train channels_last (`layout`); files want plain tensors
    unet_peft = {k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    te_peft = get_peft_model_state_dict(te) if te is not None else None
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(unet_peft),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(te_peft) if te_peft else None,
        unet_lora_adapter_metadata=_metadata(unet),
        text_encoder_lora_adapter_metadata=_metadata(te) if te is not None else None,
        safe_serialization=True,
    )
    peft_all = {f"unet.{k}": v for k, v in unet_peft.items()}
    if te_peft:
        peft_all.update({f"text_encoder.{k}": v for k, v in te_peft.items()})
    kohya = convert_state_dict_to_kohya(peft_all)
    alpha = float(trainer.cfg.lora_alpha or trainer.cfg.lora_rank)
    kohya = {
        k: (torch.tensor(alpha) if k.endswith(".alpha") else v.detach().to("cpu", torch.float16).contiguous())
        for k, v in kohya.items()
    }
    kohya_path = folder / "lora_kohya.safetensors"
    save_file(kohya, str(kohya_path), metadata={"ss_network_dim": str(trainer.cfg.lora_rank)})
    return folder / LORA_FILE, kohya_path


def write_full(trainer: Trainer, folder: Path) -> Path:
    """fp16 weights of everything that was trained, in one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    unet = trainer.acc.unwrap_model(trainer.unet_p)
    tensors.update({f"unet.{k}": v.detach().to("cpu", torch.float16) for k, v in unet.state_dict().items()})
    if trainer.te_p is not None:
        te = trainer.acc.unwrap_model(trainer.te_p)
        tensors.update(
            {f"text_encoder.{k}": v.detach().to("cpu", torch.float16) for k, v in te.state_dict().items()}
        )
    path = folder / "full.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def load_full_weights(pipe: Any, path: str | Path) -> None:
    """Load a `write_full` file into a pipeline's UNet (and text encoder)."""
    state = load_file(str(path))
    for part in ("unet", "text_encoder"):
        sub = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        if sub:
            module = getattr(pipe, part)
            module.load_state_dict({k: v.to(module.dtype) for k, v in sub.items()}, strict=False)


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="dreambot-export-")
