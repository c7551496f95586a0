"""The `gpu_worker.sample` job body: a request in, stored PNGs and image rows out.

Everything that can be refused is checked before the GPU is touched: the request
(`core.sample_request`), that each subject is the job owner's and trained, that an image
to vary or upscale is theirs, and that each adapter file matches its checksum. Then,
holding the resident pipeline, the job's adapters are activated and all `n` images are
made in one batch (classifier-free guidance doubles the batch inside one UNet call per
step), each with its own seeded generator so an image depends only on its seed.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import delete

from core import jobs
from core.db import session_scope
from core.errors import NotFound, UserFacingError
from core.image_codec import png_with_metadata
from core.job_progress import JobPhase, JobProgress
from core.job_results import SampleResult, StoredImage
from core.models import Image, Job, Subject
from core.sample_request import (
    MAX_SEED,
    MAX_SUBJECTS,
    MAX_UPSCALED_SIDE,
    InvalidSampleRequest,
    SampleRequest,
    compose_prompt,
    parse_sample_request,
)
from core.settings import Settings
from core.storage import storage_from_settings
from gpu_worker.lora_cache import AdapterRef, adapter_name
from gpu_worker.pipelines import Source, StepReporter, disk_cache, generate, get_resident
from gpu_worker.preview import latent_preview
from gpu_worker.runtime import JobContext

log = logging.getLogger(__name__)
PROGRESS_INTERVAL = 1.0  # seconds between progress writes (a chat card edit each)
BLOCKED_NOTICE = "{k} of the {n} pictures were held back by the safety filter and will not be posted."


@dataclass(frozen=True)
class SubjectInfo:
    id: int
    name: str
    token: str
    class_noun: str
    artifact_key: str
    artifact_sha256: str


def run(ctx: JobContext) -> SampleResult:
    settings = ctx.settings
    req = parse_sample_request(ctx.params)
    subject_ids = list(dict.fromkeys([*ctx.subject_ids, *req.subject_ids]))
    if len(subject_ids) > MAX_SUBJECTS:
        raise InvalidSampleRequest(f"I can put at most {MAX_SUBJECTS} subjects in one picture.")
    subjects = load_subjects(settings, ctx.owner_id, subject_ids)
    source = load_source(settings, ctx.owner_id, req.source_image_id)
    if source is not None and req.upscale_of is not None and 2 * max(source.image.size) > MAX_UPSCALED_SIDE:
        raise InvalidSampleRequest(
            f"That picture is already too big to upscale (max {MAX_UPSCALED_SIDE} px)."
        )
    prompt = compose_prompt(
        req.prompt or (source.prompt if source else ""), [(s.token, s.class_noun) for s in subjects]
    )
    disk = disk_cache(settings)
    refs = [
        AdapterRef(
            adapter_name(s.id, s.artifact_sha256), disk.get(s.artifact_key, s.artifact_sha256, f"“{s.name}”")
        )
        for s in subjects
    ]
    seeds = req.seeds(secrets.randbelow(MAX_SEED + 1))
    _forget_earlier_attempts(settings, ctx.lease.job_id)

    resident = get_resident(settings)
    with resident.lock:
        resident.use_adapters(refs, settings)
        images, flagged, steps_run = generate(resident, settings, req, prompt, seeds, source, _reporter(ctx))
    ctx.progress(JobProgress(phase=JobPhase.SAVING, step=steps_run, total=steps_run))
    result = _store(ctx, req, prompt, subjects, seeds, images, flagged)
    # Whether a safety checker looked at these pictures (the model may ship without one).
    result.safety_checked = bool(settings.nsfw_filter and resident.safety_checker is not None)
    return result


def load_subjects(settings: Settings, owner_id: int | None, ids: list[int]) -> list[SubjectInfo]:
    """The job owner's subjects `ids`, ready to use, or a `UserFacingError` saying why not.

    A job without an owner (the operator's CLI) may use any subject.
    """
    out: list[SubjectInfo] = []
    with session_scope(settings) as session:
        for sid in ids:
            subject = session.get(Subject, sid)
            # Someone else's subject reads exactly like a missing one: no hint that it exists.
            if subject is None or (owner_id is not None and subject.owner_id != owner_id):
                raise NotFound(f"I can't find subject #{sid} among your subjects.")
            if not subject.artifact_key or not subject.artifact_sha256:
                raise UserFacingError(f"“{subject.name}” isn't trained yet; try again when training is done.")
            if subject.base_model != settings.base_model:
                raise UserFacingError(
                    f"“{subject.name}” was trained on {subject.base_model}, but this server draws with "
                    f"{settings.base_model}; please train it again."
                )
            out.append(
                SubjectInfo(
                    subject.id,
                    subject.name,
                    subject.token,
                    subject.class_noun,
                    subject.artifact_key,
                    subject.artifact_sha256,
                )
            )
    return out


def load_source(settings: Settings, owner_id: int | None, image_id: int | None) -> Source | None:
    """The earlier image to vary or upscale; only the owner's own images."""
    if image_id is None:
        return None
    with session_scope(settings) as session:
        row = session.get(Image, image_id)
        job = session.get(Job, row.job_id) if row is not None else None
        if row is None or job is None or (owner_id is not None and job.owner_id != owner_id):
            raise NotFound(f"I can't find image #{image_id} among your pictures.")
        key, prompt = row.storage_key, row.prompt
    data = storage_from_settings(settings).read_bytes(key)
    with PILImage.open(io.BytesIO(data)) as im:
        return Source(im.convert("RGB"), prompt)


def _forget_earlier_attempts(settings: Settings, job_id: int) -> None:
    # A retried job writes the same keys again; rows from a lost attempt would be duplicates.
    with session_scope(settings) as session:
        session.execute(delete(Image).where(Image.job_id == job_id))


def _reporter(ctx: JobContext) -> StepReporter:
    """A step callback: cancel check every step, progress + preview at most every PROGRESS_INTERVAL."""
    last = [-math.inf]

    def report(step: int, total: int, latents: Any) -> None:
        ctx.check_cancelled()
        now = time.monotonic()
        if now - last[0] < PROGRESS_INTERVAL:
            return
        last[0] = now
        preview = latent_preview(latents[0].detach().float().cpu().numpy())
        ctx.progress(JobProgress(phase=JobPhase.SAMPLING, step=step, total=total, preview=preview))

    return report


def _store(
    ctx: JobContext,
    req: SampleRequest,
    prompt: str,
    subjects: list[SubjectInfo],
    seeds: list[int],
    images: list[PILImage.Image],
    flagged: list[bool],
) -> SampleResult:
    settings = ctx.settings
    storage = storage_from_settings(settings)
    stored: list[StoredImage] = []
    for i, (image, seed, bad) in enumerate(zip(images, seeds, flagged, strict=True)):
        if bad:  # never stored, so never posted
            continue
        meta = {
            "prompt": prompt,
            "negative_prompt": req.negative_prompt,
            "seed": seed,
            "steps": req.steps,
            "guidance_scale": req.guidance_scale,
            "scheduler": req.scheduler,
            "base_model": settings.base_model,
            "subjects": ", ".join(f"{s.token} {s.class_noun} (#{s.id})" for s in subjects),
            "size": f"{image.width}x{image.height}",
            "variation_of": req.variation_of,
            "upscale_of": req.upscale_of,
            "strength": req.effective_strength if req.source_image_id else None,
        }
        key = f"jobs/{ctx.lease.job_id}/{i}.png"
        storage.put(key, png_with_metadata(image, {k: v for k, v in meta.items() if v is not None}))
        image_id = jobs.add_image(
            settings,
            ctx.lease,
            storage_key=key,
            seed=seed,
            prompt=prompt,
            width=image.width,
            height=image.height,
        )
        stored.append(StoredImage(id=image_id, key=key, seed=seed, width=image.width, height=image.height))
    blocked = len(images) - len(stored)
    return SampleResult(
        images=stored,
        image_ids=[s.id for s in stored],
        seeds=seeds,
        blocked=blocked,
        prompt=prompt,
        negative_prompt=req.negative_prompt,
        steps=req.steps,
        guidance_scale=req.guidance_scale,
        scheduler=req.scheduler,
        subject_ids=[s.id for s in subjects],
        notice=BLOCKED_NOTICE.format(k=blocked, n=len(images)) if blocked else None,
    )
