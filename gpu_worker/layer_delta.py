"""One layer's share of a person's adapter, as the resident adapters merge it by value, and
the refusal for a file that does not fit. Shared by the direct reader (`lora_reader`) and the
general peft path (`resident_adapters`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import UserFacingError

MISMATCH = (
    "This trained model does not fit the current base model (it was probably trained on another "
    "one); please train it again."
)


class UnsupportedAdapter(UserFacingError):
    """An adapter file this worker cannot merge (DoRA, LoRA biases)."""


@dataclass(frozen=True)
class LayerDelta:
    """One layer's share of an adapter: delta = up @ down (scaling folded into `up`), or a
    ready `full` delta for layers that are not plain linear LoRA (conv LoRAs)."""

    module: torch.nn.Module  # the model's own Linear/Conv2d whose weight the delta adds to
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    full: torch.Tensor | None = None

    def delta(self) -> torch.Tensor:
        weight = self.module.get_parameter("weight")
        if self.full is not None:
            return self.full.float()
        assert self.up is not None and self.down is not None
        return (self.up.float() @ self.down.float()).view(weight.shape)
