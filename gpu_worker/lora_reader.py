"""An adapter file's factors read straight into `LayerDelta`s, the model left untouched.

The general way to read any LoRA format is diffusers' `load_lora_weights`: it injects peft
layers into the model, we copy their factors and remove them again. That costs a module
tree rebuild (most of a cold load's time), and while it lasts no graph may be built.

For the files people's trainings produce (UNet layers only, plain LoRA on linear and 1x1
convolution layers, in diffusers', peft's or kohya's layout) this reads the same numbers
without touching the model: diffusers' own `lora_state_dict` converts the layout and
finds the alphas (and the file's LoRA metadata), diffusers' own `_create_lora_config`
makes the `LoraConfig` its loader would make, and each layer's scale is peft's
(alpha / r, or alpha / sqrt(r) with rsLoRA, per-layer patterns honoured). Anything else
(text-encoder layers, DoRA, LoRA biases, other kernels) returns None: read it the general
way. A test checks both ways give the same deltas for each layout.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from gpu_worker.layer_delta import MISMATCH, LayerDelta, UnsupportedAdapter

log = logging.getLogger(__name__)
PREFIX = "unet."


def read_unet_deltas(pipe: Any, path: Path, name: str) -> list[LayerDelta] | None:
    """The file's deltas, or None when it needs the general (peft) way."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import _create_lora_config

    state, alphas, metadata = type(pipe).lora_state_dict(str(path), return_lora_metadata=True)
    if not state or any(not key.startswith(PREFIX) for key in state):
        return None  # text-encoder layers (or no prefix at all): the general way
    factors = {key.removeprefix(PREFIX): value for key, value in state.items()}
    if "lora_A" not in next(iter(factors)):
        factors = convert_unet_state_dict_to_peft(factors)
    if any(not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")) for k in factors):
        return None  # DoRA magnitudes, LoRA biases
    rank = {f"^{k}": v.shape[1] for k, v in factors.items() if ".lora_B." in k and v.ndim > 1}
    unet_alphas = {k.removeprefix(PREFIX): v for k, v in (alphas or {}).items() if k.startswith(PREFIX)}
    unet_meta = (
        {k.removeprefix(PREFIX): v for k, v in metadata.items() if k.startswith(PREFIX)} if metadata else None
    )
    config = _create_lora_config(factors, unet_alphas or None, unet_meta, rank, adapter_name=name)
    if config.use_dora or getattr(config, "lora_bias", False):
        return None
    deltas = []
    for layer in sorted({k.rsplit(".lora_", 1)[0] for k in factors}):
        down, up = factors.get(f"{layer}.lora_A.weight"), factors.get(f"{layer}.lora_B.weight")
        if down is None or up is None:
            raise UnsupportedAdapter(MISMATCH)
        delta = _layer_delta(pipe.unet, layer, down, up, _scaling(config, layer))
        if delta is None:
            return None
        deltas.append(delta)
    return deltas


def _scaling(config: Any, layer: str) -> float:
    """peft's scale of one layer: its alpha over its rank (or the rank's square root)."""
    from peft.utils.other import get_pattern_key

    r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), layer), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), layer), config.lora_alpha)
    return float(alpha) / (math.sqrt(r) if config.use_rslora else r)


def _layer_delta(
    model: torch.nn.Module, layer: str, down: torch.Tensor, up: torch.Tensor, scaling: float
) -> LayerDelta | None:
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        log.warning("adapter layer %s is not in this model", layer)
        raise UnsupportedAdapter(MISMATCH) from None
    weight = module.get_parameter("weight")
    rank = down.shape[0]
    if (
        up.ndim < 2
        or up.shape[1] != rank
        or up.shape[0] != weight.shape[0]
        or down.shape[1] != weight.shape[1]
    ):
        log.warning("adapter layer %s has shapes %s/%s for a %s weight", layer, tuple(down.shape),
                    tuple(up.shape), tuple(weight.shape))  # fmt: skip
        raise UnsupportedAdapter(MISMATCH)
    device = weight.device
    if isinstance(module, torch.nn.Linear) and down.ndim == 2 and up.ndim == 2:
        return LayerDelta(module, up=(up.float() * scaling).to(device), down=down.float().to(device))
    if isinstance(module, torch.nn.Conv2d) and up.shape[2:] == (1, 1) and down.shape[2:] == weight.shape[2:]:
        full = (up.flatten(1).float() @ down.flatten(1).float()).view(weight.shape) * scaling
        return LayerDelta(module, full=full.to(device, weight.dtype))
    return None
