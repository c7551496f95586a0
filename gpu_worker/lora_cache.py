"""People's LoRAs: a verified local disk cache, and a bounded set of resident adapters.

Two levels, so the hundredth person's dog costs no more than the first:

* `LoraDiskCache` keeps adapter files fetched from storage under the worker's data folder,
  named by their sha256 and checked against it before use; a damaged copy is fetched
  again, a damaged original is refused. The folder is bounded in bytes, least recently
  used first out. A file lock makes it safe for several worker processes on one host
  (the train and sample workers of every GPU share one folder): one fetch at a time, no
  half-written file ever under its final name, and leftovers of a killed process are
  removed. A path handed out was used last, so it is evicted last: size the bound for at
  least (worker processes on the host) x (adapters in one job) of the largest files.
* `ResidentAdapters` keeps up to `capacity` adapters loaded in the resident pipeline as
  named peft adapters. A request only calls `set_adapters` (milliseconds) when its
  adapters are already resident; beyond capacity the least recently used one is deleted
  from the pipeline so memory and per-step cost stay flat.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from core.errors import NotFound, UserFacingError
from core.storage import CHUNK, ChecksumMismatch, Storage

log = logging.getLogger(__name__)
SUFFIX = ".safetensors"


class DamagedAdapter(UserFacingError):
    """A stored adapter whose bytes do not match the checksum recorded at training."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LoraDiskCache:
    """Verified local copies of stored adapter files, at most `max_bytes` in all."""

    def __init__(self, root: Path, storage: Storage, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.max_bytes = max_bytes
        self._lock = FileLock(str(self.root / ".lock"))

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / f"{sha256}{SUFFIX}"

    def get(self, key: str, sha256: str, what: str = "this subject") -> Path:
        """A local path whose content is exactly `sha256`, fetched from `key` if needed."""
        path = self.path_for(sha256)
        with self._lock:
            self._drop_partials()
            if path.is_file():
                if file_sha256(path) == sha256:
                    # mtime = last use, for the LRU; an explicit ns time, since the kernel's
                    # own "now" is a clock tick and two uses ms apart would tie.
                    now = time.time_ns()
                    os.utime(path, ns=(now, now))
                    return path
                log.warning("lora cache: %s is damaged; fetching it again from %s", path.name, key)
                path.unlink()
            self._fetch(key, sha256, path, what)
            self._trim(keep=path)
        return path

    def _fetch(self, key: str, sha256: str, path: Path, what: str) -> None:
        tmp = self.root / f".{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        try:
            try:
                src = self.storage.open(key)
            except NotFound:
                raise DamagedAdapter(
                    f"The trained model for {what} is missing from storage; please train it again."
                ) from None
            try:
                with src, tmp.open("wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                damaged = digest.hexdigest() != sha256
            except ChecksumMismatch:  # the store noticed first (S3 keeps each object's sha256)
                damaged = True
            if damaged:
                raise DamagedAdapter(
                    f"The trained model for {what} is damaged (its checksum does not match); "
                    "please train it again."
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _drop_partials(self) -> None:
        # Fetches run under the lock, so a `.part` seen while holding it belongs to a
        # process that died mid-download: it is garbage, never a file being written.
        for part in self.root.glob(".*.part"):
            part.unlink(missing_ok=True)

    def _trim(self, keep: Path) -> None:
        files = sorted(self.root.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= self.max_bytes:
                break
            if old == keep:
                continue
            total -= old.stat().st_size
            old.unlink(missing_ok=True)
            log.info("lora cache: evicted %s from disk", old.name)

    def cached(self) -> list[str]:
        """The sha256 digests held on disk now."""
        return sorted(p.name.removesuffix(SUFFIX) for p in self.root.glob(f"*{SUFFIX}"))


@dataclass(frozen=True)
class AdapterRef:
    """One adapter to activate: its pipeline name and where its verified file is."""

    name: str
    path: Path
    weight: float = 1.0


def adapter_name(subject_id: int, sha256: str) -> str:
    # The digest is part of the name, so a retrained subject never reuses stale weights.
    return f"s{subject_id}_{sha256[:12]}"


class ResidentAdapters:
    """An LRU of named LoRA adapters loaded in one pipeline.

    With `fuse`, the active adapters are merged into the base weights, so a step costs
    exactly what the base model's does (unfused peft layers add many small kernels per
    step). Unfusing does not subtract the deltas again (in half precision that drifts a
    little more with every swap); it copies back the base weights saved before the
    first merge, so the base model comes back bit for bit.
    """

    def __init__(self, pipe: Any, capacity: int, fuse: bool = False) -> None:
        self.pipe = pipe
        self.capacity = max(1, capacity)
        self.fuse = fuse
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._fused: tuple[tuple[str, float], ...] = ()
        self._originals: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()
        self.loads = 0  # how many times a file was loaded (tests and metrics)

    @property
    def resident(self) -> list[str]:
        """Adapter names, least recently used first."""
        return list(self._loaded)

    @property
    def fused(self) -> list[str]:
        return [name for name, _ in self._fused]

    def activate(self, refs: Sequence[AdapterRef]) -> None:
        """Make exactly `refs` active (loading, and evicting beyond capacity, as needed)."""
        wanted = [r.name for r in refs]
        key = tuple((r.name, r.weight) for r in refs)
        if self.fuse and key and key == self._fused:  # already merged in: nothing to do
            for name in wanted:
                self._loaded.move_to_end(name)
            return
        self._unfuse()
        for ref in refs:
            if ref.name in self._loaded:
                self._loaded.move_to_end(ref.name)
            else:
                self._make_room(keep=set(wanted))
                self._load(ref)
        if refs:
            self.pipe.enable_lora()
            self.pipe.set_adapters(wanted, adapter_weights=[r.weight for r in refs])
            if self.fuse:
                self._merge(wanted, key)
        elif self._loaded:
            self.pipe.disable_lora()  # exactly the base model until adapters are asked for again

    def _tuner_layers(self) -> list[Any]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        components = [getattr(self.pipe, name, None) for name in ("unet", "text_encoder")]
        return [m for c in components if c is not None for m in c.modules() if isinstance(m, BaseTunerLayer)]

    def _merge(self, names: list[str], key: tuple[tuple[str, float], ...]) -> None:
        for layer in self._tuner_layers():
            if not any(name in getattr(layer, "lora_A", {}) for name in names):
                continue
            base = layer.get_base_layer()
            if layer not in self._originals:  # unmerged now: these are the true base weights
                bias = getattr(base, "bias", None)
                self._originals[layer] = (
                    base.weight.detach().clone(),
                    None if bias is None else bias.detach().clone(),
                )
            layer.merge(adapter_names=names)
        self._fused = key

    def _unfuse(self) -> None:
        if not self._fused:
            return
        for layer in self._tuner_layers():
            if layer.merged:
                weight, bias = self._originals[layer]
                base = layer.get_base_layer()
                base.weight.data.copy_(weight)
                if bias is not None:
                    base.bias.data.copy_(bias)
                layer.merged_adapters.clear()
        self._fused = ()

    def _load(self, ref: AdapterRef) -> None:
        from safetensors.torch import load_file

        state = load_file(str(ref.path))
        # low_cpu_mem_usage skips initialising weights that are overwritten at once.
        self.pipe.load_lora_weights(state, adapter_name=ref.name, low_cpu_mem_usage=True)
        self._loaded[ref.name] = None
        self.loads += 1
        log.info("adapter %s loaded (%d resident)", ref.name, len(self._loaded))

    def _make_room(self, keep: set[str]) -> None:
        while len(self._loaded) >= self.capacity:
            victim = next((n for n in self._loaded if n not in keep), None)
            if victim is None:  # every resident adapter is needed now: go over for a moment
                return
            self.evict(victim)

    def evict(self, name: str) -> None:
        if name in self._loaded:
            self._unfuse()
            self.pipe.delete_adapters([name])
            del self._loaded[name]
            log.info("adapter %s evicted (%d resident)", name, len(self._loaded))
