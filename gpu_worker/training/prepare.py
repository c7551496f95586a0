"""Making a loaded base model trainable for one configuration, and again for the next job.

`prepare_models` freezes what is not trained, adds the LoRA layers (UNet, and the text
encoder when asked) or unfreezes the UNet for a full fine-tune, and lays the UNet out for
speed (`layout`). A worker keeps its base model between jobs (`resident`): when the models
were already prepared for the same shape of run, only the LoRA weights are initialised
again, so the module tree — and with it a compiled UNet and its graphs — stays the same.

LoRA weights are initialised from the run's seed on the CPU (A ~ N(0, 1/r), B = 0, as
peft's "gaussian" init), so a run starts from the same weights on any device and whether or
not the layers are new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, inject_adapter_in_model

from core.train_config import TrainConfig
from gpu_worker.training.layout import (
    keep_channels_last,
    no_lora_input_casts,
    norms_to_fp32,
    set_training_mode,
)
from gpu_worker.training.models import Components, dtype_for, pick_precision

TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
ADAPTER = "default"


@dataclass(frozen=True)
class Shape:
    """What decides the module tree and dtypes of a prepared model (not its weights)."""

    method: str
    lora_rank: int
    lora_alpha: float
    lora_targets: tuple[str, ...]
    train_text_encoder: bool
    gradient_checkpointing: bool
    weight_dtype: torch.dtype
    device_type: str

    @classmethod
    def of(cls, cfg: TrainConfig, weight_dtype: torch.dtype, device: torch.device) -> Shape:
        return cls(
            cfg.method, cfg.lora_rank, float(cfg.lora_alpha or cfg.lora_rank), tuple(cfg.lora_targets),
            cfg.train_text_encoder, cfg.gradient_checkpointing, weight_dtype, device.type,
        )  # fmt: skip

    @classmethod
    def planned(cls, cfg: TrainConfig) -> Shape:
        """The shape a Trainer on this host will prepare for `cfg`."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return cls.of(cfg, dtype_for(pick_precision(cfg.mixed_precision, device)), device)


def move_module(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """`.to(device, dtype)`, passing the dtype only for a real cast (diffusers warns on every cast)."""
    if next(module.parameters()).dtype == dtype:
        module.to(device)
    else:
        module.to(device, dtype=dtype)


def _lora_config(shape: Shape, targets: list[str]) -> LoraConfig:
    return LoraConfig(
        r=shape.lora_rank, lora_alpha=shape.lora_alpha, init_lora_weights="gaussian", target_modules=targets
    )


def _add_lora(shape: Shape, unet: Any, te: Any, device: torch.device) -> None:
    move_module(unet, device, shape.weight_dtype)
    norms_to_fp32(unet)  # frozen half base: autocast would cast norm weights at every call
    unet.add_adapter(_lora_config(shape, list(shape.lora_targets)))
    cast_training_params(unet, dtype=torch.float32)  # LoRA weights train in fp32
    no_lora_input_casts(unet)
    if shape.train_text_encoder:
        move_module(te, device, shape.weight_dtype)
        norms_to_fp32(te)
        # peft directly: transformers' own `add_adapter` wants a newer peft than diffusers
        # does; recording `peft_config` is all that it adds on top.
        config = _lora_config(shape, TEXT_ENCODER_LORA_TARGETS)
        inject_adapter_in_model(config, te, adapter_name=ADAPTER)
        te.peft_config = {ADAPTER: config}
        cast_training_params(te, dtype=torch.float32)
        no_lora_input_casts(te)


@torch.no_grad()
def init_lora(modules: list[Any], seed: int) -> None:
    """A ~ N(0, 1/r) from `seed` (on the CPU, so every device starts alike), B = 0."""
    g = torch.Generator().manual_seed(seed)
    for module in modules:
        for _, layer in sorted(module.named_modules(), key=lambda item: item[0]):
            if not hasattr(layer, "lora_A") or ADAPTER not in layer.lora_A:
                continue
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            std = 1 / layer.r[ADAPTER]
            a.copy_(torch.randn(a.shape, generator=g, dtype=torch.float32).mul_(std))
            b.zero_()


def prepare_models(
    comps: Components, cfg: TrainConfig, weight_dtype: torch.dtype, device: torch.device
) -> dict[str, torch.nn.Parameter]:
    """Make `comps` trainable for `cfg`; returns the trainable parameters by name."""
    shape = Shape.of(cfg, weight_dtype, device)
    unet, te = comps.unet, comps.text_encoder
    done = getattr(unet, "_dreambot_shape", None)
    if done is not None and done != shape:
        raise ValueError("these models were prepared for another kind of run: load them again")
    if done is None:
        for model in (comps.vae, te, unet):
            model.requires_grad_(False)
        if shape.method == "lora":
            _add_lora(shape, unet, te, device)
        else:
            unet.requires_grad_(True)
            unet.to(device)  # fp32 master weights; autocast computes in half
            if shape.train_text_encoder:
                te.requires_grad_(True)
                te.to(device)
        keep_channels_last(unet)
        if shape.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if shape.train_text_encoder:
                te.gradient_checkpointing_enable()
        unet._dreambot_shape = shape
    if shape.method == "lora":
        init_lora([unet, te] if shape.train_text_encoder else [unet], cfg.seed)
    set_training_mode(unet)
    te.train(shape.train_text_encoder)
    trainable = {f"unet.{n}": p for n, p in unet.named_parameters() if p.requires_grad}
    if shape.train_text_encoder:
        trainable.update({f"text_encoder.{n}": p for n, p in te.named_parameters() if p.requires_grad})
    return trainable
