"""One memory format and no per-op weight casts in a training step.

What a profile of the plain diffusers UNet showed on an H200 (`bench/step_profile.py`):
a fifth of the GPU's time went to cuDNN converting NCHW activations to NHWC and back, and
another sixth to dtype casts, thousands a step. This module removes their causes:

- the UNet and its inputs are channels_last, and stay so: diffusers turns the attention
  blocks' output back to NCHW with `.contiguous()` (and the resnets' shortcut input, in
  training mode only), so those two spots are kept channels_last here;
- a frozen half-precision base keeps its norm layers in fp32: autocast runs group/layer
  norm in fp32 on CUDA and would otherwise cast their weights at every call;
- peft's LoRA layers do not cast each activation to the factors' fp32 and back: under
  autocast the factors are cast once per forward instead (autocast caches that cast).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

NORMS = (nn.GroupNorm, nn.LayerNorm)


def dropout_free(module: nn.Module) -> bool:
    """True when no dropout layer of `module` drops anything: train and eval compute the same."""
    return all(m.p == 0 for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd))


def norms_to_fp32(module: nn.Module) -> None:
    """Frozen norm layers in fp32 beside a half-precision base (see the module docstring)."""
    for m in module.modules():
        if isinstance(m, NORMS) and any(p.dtype != torch.float32 for p in m.parameters(recurse=False)):
            m.float()


def no_lora_input_casts(module: nn.Module) -> None:
    """Let peft's LoRA layers take activations as they come (bf16 under autocast)."""
    for m in module.modules():
        if hasattr(m, "lora_A"):
            layer: Any = m  # a peft LoraLayer (its flag is not in torch's Module types)
            layer.cast_input_dtype_enabled = False


def _channels_last_output(
    self: Any, hidden_states: torch.Tensor, residual: torch.Tensor, batch_size: int, height: int,
    width: int, inner_dim: int,
) -> torch.Tensor:  # fmt: skip
    """diffusers' `Transformer2DModel._get_output_for_continuous_inputs` without the
    `.contiguous()` that turns a channels_last view into an NCHW copy."""
    if not self.use_linear_projection:
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        hidden_states = self.proj_out(hidden_states)
    else:
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    return hidden_states + residual


def keep_channels_last(unet: Any) -> None:
    """channels_last weights, and the attention blocks' outputs left channels_last."""
    unet.to(memory_format=torch.channels_last)
    for m in unet.modules():
        if hasattr(m, "_get_output_for_continuous_inputs") and hasattr(m, "use_linear_projection"):
            block: Any = m  # a diffusers Transformer2DModel
            block._get_output_for_continuous_inputs = types.MethodType(_channels_last_output, m)


def set_training_mode(unet: nn.Module) -> None:
    """`train()` only where it changes the result: a dropout-free UNet computes the same in
    eval mode, where diffusers' resnets skip a `.contiguous()` (an NCHW copy) of their input."""
    unet.train(not dropout_free(unet))


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
