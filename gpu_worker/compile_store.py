"""torch.compile's artifacts kept in storage, so a graph is compiled once per fleet.

`torch.compiler.save_cache_artifacts()` serialises what this process compiled or read
from its local caches (inductor's FX graph cache with the Triton kernels bundled,
AOTAutograd's cache, autotuning results); `load_cache_artifacts()` writes such a blob
into the local caches, so a later `torch.compile` of the same graph is a cache hit
instead of a compile. This module keeps one blob per `CompileKey` in `core.storage` (a
folder or S3, under `compile-cache/`): load it before compiling, save after compiling.

An entry only ever grows. A save merges this process's artifacts into what is stored
(artifacts are keyed by torch's own cache keys, so the union is exact) and writes only
when something is new, atomically (a storage `put`); after writing it reads the entry
back, and merges again if another worker's save raced it. A damaged, foreign or
unreadable entry is ignored with one log line: the worst case is a compile.

torch checks its own keys (graph hash, torch version, device properties, inductor config)
on every lookup, so a stale artifact can only miss, never be wrong; `CompileKey` is the
routing: which entry a worker loads, so it does not download every other model's kernels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.errors import NotFound
from core.settings import Settings
from core.storage import Storage, storage_from_settings, validate_key

log = logging.getLogger(__name__)
PREFIX = "compile-cache"
MAGIC = b"dreambot-compile-cache 1\n"
SAVE_ATTEMPTS = 3


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def device_name() -> str:
    """The accelerator kernels are compiled for: the GPU's name, or `cpu`."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name()}"
    return "cpu"


class CompileKey(BaseModel):
    """Which compiled artifacts an entry holds. Callers add the fields that change their
    graphs (sampling: dtype and compile options; training: resolution, rank, targets …)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    purpose: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    base_model: str
    torch: str = Field(default_factory=_torch_version)
    device: str = Field(default_factory=device_name)
    options: dict[str, Any] = Field(default_factory=dict)

    def canonical(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def storage_key(self) -> str:
        digest = hashlib.sha256(self.canonical().encode()).hexdigest()[:32]
        return validate_key(f"{PREFIX}/{self.purpose}/{digest}.bin")


# -- torch's artifact blobs -------------------------------------------------------------------
# torch serialises a list of (kind, [artifacts]) records. Reading the records one by one (not
# torch's own dict() of them) keeps every artifact when a kind appears twice, which it does
# after two saves in one process; writing one record per kind gives a blob that
# `load_cache_artifacts` reads whole.

Artifacts = dict[tuple[str, str], Any]  # (kind, torch's cache key) -> torch's CacheArtifact


def parse_artifacts(blob: bytes) -> Artifacts:
    from torch.compiler._cache import CacheArtifactManager, _deserialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    CacheArtifactManager._ensure_cache_artifacts_registered()
    found: Artifacts = {}
    for kind, artifacts in AppendingByteSerializer.to_list(blob, deserialize_fn=_deserialize_single_cache):
        for artifact in artifacts:
            found[(kind, artifact.key)] = artifact
    return found


def pack_artifacts(artifacts: Artifacts) -> bytes:
    from torch.compiler._cache import _serialize_single_cache
    from torch.utils._appending_byte_serializer import AppendingByteSerializer

    by_kind: dict[str, list[Any]] = defaultdict(list)
    for (kind, _), artifact in sorted(artifacts.items(), key=lambda item: item[0]):
        by_kind[kind].append(artifact)
    writer = AppendingByteSerializer(serialize_fn=_serialize_single_cache)
    writer.extend(by_kind.items())
    return writer.to_bytes()


def _same(a: Artifacts, b: Artifacts) -> bool:
    return a.keys() == b.keys() and all(a[k].content == b[k].content for k in a)


# -- entries in storage ---------------------------------------------------------------------


def encode_entry(key: CompileKey, blob: bytes, count: int) -> bytes:
    header = {"key": key.model_dump(mode="json"), "artifacts": count, "bytes": len(blob)}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + blob


def decode_entry(data: bytes, key: CompileKey) -> bytes:
    """The torch blob of a stored entry; `ValueError` when it is damaged or for another key."""
    if not data.startswith(MAGIC):
        raise ValueError("not a compile-cache entry")
    header_line, sep, blob = data[len(MAGIC) :].partition(b"\n")
    if not sep:
        raise ValueError("truncated entry")
    header = json.loads(header_line)
    if header.get("key") != key.model_dump(mode="json"):
        raise ValueError("entry written for another key")
    if header.get("bytes") != len(blob):
        raise ValueError(f"truncated entry ({len(blob)} of {header.get('bytes')} bytes)")
    return blob


class CompileStore:
    """Load before compiling, save after: one merged entry per `CompileKey`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _read(self, key: CompileKey) -> bytes | None:
        """The stored blob for `key`, or None (absent, or ignored with one log line)."""
        name = key.storage_key()
        try:
            data = self.storage.read_bytes(name)
        except NotFound:
            return None
        except Exception as exc:  # storage down: compile as if there were no entry
            log.warning("compile cache: could not read %s (%s); compiling from scratch", name, exc)
            return None
        try:
            return decode_entry(data, key)
        except ValueError as exc:
            log.warning("compile cache: ignoring %s: %s", name, exc)
            return None

    def load(self, key: CompileKey) -> int:
        """Put the stored artifacts for `key` into torch's local caches. Returns how many."""
        import torch

        artifacts = self._stored_artifacts(key)  # read and checked here: a bad entry is one line
        if not artifacts:
            return 0
        torch.compiler.load_cache_artifacts(pack_artifacts(artifacts))
        log.info("compile cache: loaded %d artifacts from %s", len(artifacts), key.storage_key())
        return len(artifacts)

    def save(self, key: CompileKey) -> int:
        """Merge what this process compiled into the entry for `key`. Returns how many
        artifacts were new to the store (0: nothing to write)."""
        import torch

        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return 0
        try:
            mine = parse_artifacts(saved[0])
        except Exception as exc:  # torch's format changed: keep the store as it is
            log.warning("compile cache: cannot read this torch's artifacts (%s); not saving", exc)
            return 0
        for _ in range(SAVE_ATTEMPTS):
            stored = self._stored_artifacts(key)
            merged = {**stored, **mine}
            if _same(merged, stored):
                return 0
            self.storage.put(key.storage_key(), encode_entry(key, pack_artifacts(merged), len(merged)))
            # Another worker may have written between our read and our write: check ours are in.
            if mine.keys() <= self._stored_artifacts(key).keys():
                new = len(merged) - len(stored)
                log.info("compile cache: saved %d new artifacts to %s", new, key.storage_key())
                return new
        log.warning("compile cache: %s kept changing under us; some artifacts not saved", key.storage_key())
        return 0

    def _stored_artifacts(self, key: CompileKey) -> Artifacts:
        blob = self._read(key)
        if blob is None:
            return {}
        try:
            return parse_artifacts(blob)
        except Exception as exc:
            log.warning("compile cache: ignoring %s: %s", key.storage_key(), exc)
            return {}


def store_from_settings(settings: Settings) -> CompileStore | None:
    """The store of these settings, or None when `DREAMBOT_COMPILE_CACHE` is off."""
    if not settings.compile_cache:
        return None
    return CompileStore(storage_from_settings(settings))
