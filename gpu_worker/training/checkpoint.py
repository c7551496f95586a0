"""Resumable checkpoints in storage: `subjects/{id}/checkpoints/step-0000100.pt`.

Only the newest checkpoint is kept (written first, then the older ones removed, so there
is always one whole checkpoint). A checkpoint records a fingerprint of everything that
decides the training trajectory; one with another fingerprint is ignored, never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from typing import Any

import torch

from core.storage import Storage

log = logging.getLogger(__name__)

_STEP = re.compile(r"step-(\d+)\.pt$")
# Settings that do not change the weights a run produces: left out of the fingerprint.
_NEUTRAL = {
    "checkpoint_every",
    "progress_interval",
    "class_batch_size",
    "preview_interval",
    "validation_images",
    "validation_prompt",
    "validation_steps",
    "validation_guidance_scale",
    # How the step runs, not what it computes (beyond rounding): a run may resume either way.
    "compile",
    "cuda_graph",
}


def prefix(subject_id: int) -> str:
    return f"subjects/{subject_id}/checkpoints/"


def key(subject_id: int, step: int) -> str:
    return f"{prefix(subject_id)}step-{step:07d}.pt"


def fingerprint(config: dict[str, Any], base_model: str, photo_hashes: list[str], n_class: int) -> str:
    relevant = {k: v for k, v in config.items() if k not in _NEUTRAL}
    blob = json.dumps(
        {"config": relevant, "base_model": base_model, "photos": photo_hashes, "class_images": n_class},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def save(storage: Storage, subject_id: int, step: int, state: dict[str, Any]) -> str:
    buf = io.BytesIO()
    torch.save(state, buf)
    k = key(subject_id, step)
    storage.put(k, buf.getvalue())
    for old in list(storage.list(prefix(subject_id))):
        if old != k:
            storage.delete(old)
    return k


def steps_stored(storage: Storage, subject_id: int) -> list[tuple[int, str]]:
    found = []
    for k in storage.list(prefix(subject_id)):
        m = _STEP.search(k)
        if m:
            found.append((int(m.group(1)), k))
    return sorted(found, reverse=True)


def load_latest(storage: Storage, subject_id: int, want_fingerprint: str) -> dict[str, Any] | None:
    """The newest readable checkpoint with this fingerprint, or None (start from step 0)."""
    for step, k in steps_stored(storage, subject_id):
        try:
            state = torch.load(io.BytesIO(storage.read_bytes(k)), map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file: try an older one
            log.warning("checkpoint %s unreadable (%s); ignoring it", k, exc)
            continue
        if state.get("fingerprint") != want_fingerprint:
            log.info("checkpoint %s is from a different configuration or photos; starting over", k)
            return None
        log.info("resuming from %s (step %d)", k, step)
        return state
    return None


def clear(storage: Storage, subject_id: int) -> int:
    return storage.delete_prefix(prefix(subject_id))
