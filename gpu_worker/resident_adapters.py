"""People's LoRAs kept in memory beside the resident pipeline, merged into its weights.

A request with subjects costs exactly what the base model costs per step: the active
adapters' deltas are added into the base weights (W = W0 + sum of weight_i * B_i A_i),
not run as extra layers. Switching people copies the saved W0 back and adds the new
deltas: a few hundred small kernels, milliseconds, and the base model comes back bit
for bit (copied, never subtracted: subtracting in half precision drifts with every swap).

Weights change in place and only by value, never the module tree, which is what keeps a
compiled UNet's graphs and captured CUDA graphs (`gpu_worker.graphs`) valid for everyone.
Trained files are read straight into factors (`gpu_worker.lora_reader`); any other format
diffusers reads (text-encoder layers, DoRA, …) is loaded with `load_lora_weights`, its
factors taken out and the peft layers removed again at once, under `tree_lock`.

Up to `capacity` adapters stay resident (least recently used evicted first); their
factors are tiny (rank x (in + out) per layer), only the merged layers' W0 is kept.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from gpu_worker.layer_delta import MISMATCH, LayerDelta, UnsupportedAdapter
from gpu_worker.lora_cache import AdapterRef

log = logging.getLogger(__name__)
LOADABLE = ("unet", "text_encoder")


def extract_deltas(pipe: object, name: str) -> list[LayerDelta]:
    """The deltas of adapter `name`, just loaded into `pipe` as peft layers."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    deltas = []
    for component in LOADABLE:
        model = getattr(pipe, component, None)
        for layer in [] if model is None else model.modules():
            if not isinstance(layer, LoraLayer) or name not in layer.lora_A:
                continue
            if layer.use_dora.get(name) or getattr(layer, "lora_bias", {}).get(name):
                raise UnsupportedAdapter(
                    "This adapter uses DoRA or LoRA biases, which this worker cannot merge."
                )
            base = layer.get_base_layer()
            with torch.no_grad():
                if isinstance(layer, LoraLinear) and not layer.fan_in_fan_out:
                    up = layer.lora_B[name].weight.detach() * layer.scaling[name]
                    deltas.append(
                        LayerDelta(base, up=up.clone(), down=layer.lora_A[name].weight.detach().clone())
                    )
                else:
                    full = layer.get_delta_weight(name).detach().to(base.weight.dtype)
                    deltas.append(LayerDelta(base, full=full))
    return deltas


class ResidentAdapters:
    """An LRU of adapters (their factors) and the set merged into the weights now."""

    def __init__(self, pipe: object, capacity: int) -> None:
        self.pipe = pipe
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[str, list[LayerDelta]] = OrderedDict()
        self._originals: dict[torch.nn.Module, torch.Tensor] = {}  # W0 of every merged layer
        self._active: tuple[tuple[str, float], ...] = ()
        self.loads = 0  # how many times a file was read (tests and metrics)
        # Held while reading a file through peft changes the module tree for a moment, so a
        # graph being built in the background (gpu_worker.graphs) never sees it half-changed.
        self.tree_lock = threading.Lock()

    @property
    def resident(self) -> list[str]:
        """Adapter names, least recently used first."""
        return list(self._loaded)

    @property
    def active_key(self) -> tuple[tuple[str, float], ...]:
        """The active adapters and their weights: what the weights are now."""
        return self._active

    @property
    def active(self) -> list[str]:
        """The adapters merged into the weights now."""
        return [name for name, _ in self._active]

    def activate(self, refs: Sequence[AdapterRef]) -> None:
        """Make exactly `refs` active (loading, and evicting beyond capacity, as needed)."""
        key = tuple((r.name, r.weight) for r in refs)
        if any(r.name not in self._loaded for r in refs):
            self._restore()  # peft must wrap the true W0 while a file is read
        for ref in refs:
            if ref.name in self._loaded:
                self._loaded.move_to_end(ref.name)
            else:
                self._make_room(keep={r.name for r in refs})
                self._load(ref)
        if key != self._active:
            self._merge(refs)
            self._active = key

    def _restore(self) -> None:
        """Every merged layer back to W0: the base model exactly."""
        self._merge([])
        self._active = ()

    @torch.no_grad()
    def _merge(self, refs: Sequence[AdapterRef]) -> None:
        # Summed in fp32 and rounded once, so two adapters on one layer lose nothing extra.
        sums: dict[torch.nn.Module, torch.Tensor] = {}
        for ref in refs:
            for d in self._loaded[ref.name]:
                delta = ref.weight * d.delta()
                sums[d.module] = sums[d.module] + delta if d.module in sums else delta
        for module in [m for m in self._originals if m not in sums]:
            module.get_parameter("weight").copy_(self._originals.pop(module))
        for module, delta in sums.items():
            weight = module.get_parameter("weight")
            original = self._originals.setdefault(module, weight.detach().clone())
            weight.copy_((original.float() + delta.to(original.device)).to(weight.dtype))

    def _load(self, ref: AdapterRef) -> None:
        from gpu_worker.lora_reader import read_unet_deltas

        try:  # trained files: straight from the file, the model untouched
            deltas = read_unet_deltas(self.pipe, ref.path, ref.name)
        except UnsupportedAdapter:
            raise
        except Exception as exc:  # anything unexpected: the general way decides
            log.info("adapter %s: direct read failed (%s); reading it through peft", ref.name, exc)
            deltas = None
        if deltas is None:
            with self.tree_lock:
                deltas = self._read_with_peft(ref.path, ref.name)
        if not deltas:
            raise UnsupportedAdapter(MISMATCH)
        self._loaded[ref.name] = deltas
        self.loads += 1
        log.info("adapter %s loaded (%d layers, %d resident)", ref.name, len(deltas), len(self._loaded))

    def _read_with_peft(self, path: Path, name: str) -> list[LayerDelta]:
        """Any format diffusers reads: loaded as peft layers, factors taken, layers removed."""
        pipe = self.pipe
        try:
            # low_cpu_mem_usage skips initialising weights that are overwritten at once.
            pipe.load_lora_weights(str(path), adapter_name=name, low_cpu_mem_usage=True)  # type: ignore[attr-defined]
            deltas = extract_deltas(pipe, name)
        except (ValueError, RuntimeError, KeyError) as exc:
            # The file matched its checksum, so it is whole: it was made for another model.
            log.warning("adapter %s does not load: %s", name, exc)
            raise UnsupportedAdapter(MISMATCH) from None
        finally:
            pipe.unload_lora_weights()  # type: ignore[attr-defined]  # the module tree as it was
        return deltas

    def _make_room(self, keep: set[str]) -> None:
        while len(self._loaded) >= self.capacity:
            victim = next((n for n in self._loaded if n not in keep), None)
            if victim is None:  # every resident adapter is needed now: go over for a moment
                return
            self.evict(victim)

    def evict(self, name: str) -> None:
        if name not in self._loaded:
            return
        if name in self.active:
            self._restore()
        del self._loaded[name]
        log.info("adapter %s evicted (%d resident)", name, len(self._loaded))
