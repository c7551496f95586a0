"""One training of one subject, from stored photos to a stored model.

`train_subject` is shared by the Celery job (`run(ctx)`) and the local CLI: read the
subject and its photos, resolve the config, make sure the class images exist, resume from
a checkpoint if there is one, train, store the result, mark the subject ready, clean up.
Given the job's lease it also writes TensorBoard event files (`monitor.RunLog`) and, once
the model is safely stored, makes a few test pictures that become the job's images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import delete, update

from core import jobs
from core.db import session_scope
from core.errors import LeaseLost, NotFound, UserFacingError
from core.image_codec import png_with_metadata
from core.job_progress import JobPhase, JobProgress
from core.job_results import StoredImage, TrainingResult, TrainingValidation
from core.models import Image, Subject
from core.photos import validate_photo
from core.settings import Settings
from core.storage import Storage, storage_from_settings
from core.train_config import TrainConfig, build_config
from core.train_request import parse_train_request
from gpu_worker import compile_store
from gpu_worker.runtime import TRANSIENT, JobCancelled, JobContext
from gpu_worker.training import checkpoint, resident
from gpu_worker.training.class_images import ensure_class_images
from gpu_worker.training.export import scratch_dir, write_full, write_lora
from gpu_worker.training.models import Components
from gpu_worker.training.monitor import RunLog
from gpu_worker.training.prepare import Shape, prepare_models
from gpu_worker.training.step_runner import wants_compile
from gpu_worker.training.trainer import Hooks, Trainer

log = logging.getLogger(__name__)
MIN_TRAIN_SIDE = 64  # photos were checked at intake; this only guards against odd files


@dataclass
class SubjectInfo:
    id: int
    token: str
    class_noun: str
    base_model: str
    status: str
    photos: list[tuple[str, str]] = field(default_factory=list)  # (storage key, sha256)
    crops: list[list[int] | None] = field(default_factory=list)  # the coach's square crop of each


def artifact_key(subject_id: int, method: str) -> str:
    return (
        f"subjects/{subject_id}/lora.safetensors"
        if method == "lora"
        else f"subjects/{subject_id}/full.safetensors"
    )


def kohya_key(subject_id: int) -> str:
    return f"subjects/{subject_id}/lora_kohya.safetensors"


def _subject(settings: Settings, subject_id: int) -> SubjectInfo:
    with session_scope(settings) as s:
        subject = s.get(Subject, subject_id)
        if subject is None:
            raise NotFound(f"There is no subject #{subject_id} to train.")
        photos = sorted(subject.photos, key=lambda p: p.id)
        return SubjectInfo(
            id=subject.id,
            token=subject.token,
            class_noun=subject.class_noun,
            base_model=subject.base_model or settings.base_model,
            status=subject.status,
            photos=[(p.storage_key, p.sha256) for p in photos],
            crops=[p.crop for p in photos],
        )


def _set_subject(settings: Settings, subject_id: int, **values: Any) -> None:
    with session_scope(settings) as s:
        s.execute(update(Subject).where(Subject.id == subject_id).values(**values))


def resolve_config(settings: Settings, overrides: dict[str, Any], files: tuple[str, ...] = ()) -> TrainConfig:
    return build_config(deployment_file=settings.train_config, files=files, overrides=overrides)


def _load_photos(storage: Storage, info: SubjectInfo) -> list[Any]:
    if not info.photos:
        raise UserFacingError("This subject has no photos yet; send 3–10 photos first.")
    images = []
    crops = info.crops or [None] * len(info.photos)
    for (key, _sha), crop in zip(info.photos, crops, strict=True):
        name = key.rsplit("/", 1)[-1]
        try:
            data = storage.read_bytes(key)
        except NotFound:
            raise UserFacingError(f"photo {name} of this subject is missing from storage") from None
        image = validate_photo(data, name, min_side=MIN_TRAIN_SIDE)
        images.append(
            image.crop((crop[0], crop[1], crop[2], crop[3])) if crop else image
        )  # else `square` takes the centre
    return images


def train_subject(
    settings: Settings,
    subject_id: int,
    overrides: dict[str, Any] | None = None,
    hooks: Hooks | None = None,
    config_files: tuple[str, ...] = (),
    lease: jobs.Lease | None = None,
) -> TrainingResult:
    """Train `subject_id` and store the result; returns the job's result.

    With `lease` (a job runs this), metrics go to TensorBoard under the job's id and the
    validation pictures are recorded as the job's images."""
    hooks = hooks or Hooks()
    started = time.monotonic()
    storage = storage_from_settings(settings)
    info = _subject(settings, subject_id)
    cfg = resolve_config(settings, dict(overrides or {}), config_files)
    hooks.progress(JobProgress(phase=JobPhase.LOADING))
    photos = _load_photos(storage, info)
    comps = resident.components(settings, info.base_model, Shape.planned(cfg))  # kept between jobs
    cfg = cfg.resolved(n_photos=len(photos), resolution=comps.native_resolution)
    finished = False
    try:
        result = _train(settings, storage, info, cfg, comps, photos, hooks, lease, started)
        finished = True
        return result
    finally:
        resident.keep_after(cfg, finished)


def _train(
    settings: Settings,
    storage: Storage,
    info: SubjectInfo,
    cfg: TrainConfig,
    comps: Components,
    photos: list[Any],
    hooks: Hooks,
    lease: jobs.Lease | None,
    started: float,
) -> TrainingResult:
    """`train_subject` once the model and photos are at hand."""
    assert cfg.resolution is not None
    subject_id = info.id
    instance_prompt, class_prompt = cfg.prompts(info.token, info.class_noun)
    shape = Shape.planned(cfg)
    device = torch.device(shape.device_type)
    # Prepared first: class images are drawn with these very modules, in their half precision.
    prepare_models(comps, cfg, shape.weight_dtype, device)

    class_imgs, generated = [], 0
    if cfg.prior_preservation and cfg.prior_loss_weight > 0 and cfg.num_class_images > 0:
        hooks.progress(JobProgress(phase=JobPhase.CLASS_IMAGES, step=0, total=cfg.num_class_images))
        result = ensure_class_images(
            storage,
            base_model=info.base_model,
            prompt=class_prompt,
            resolution=cfg.resolution,
            count=cfg.num_class_images,
            sample_steps=cfg.class_sample_steps,
            guidance_scale=cfg.class_guidance_scale,
            batch_size=cfg.class_batch_size,
            progress=lambda done, total: hooks.progress(
                JobProgress(phase=JobPhase.CLASS_IMAGES, step=done, total=total)
            ),
            settings=settings,
            comps=comps,
        )
        class_imgs, generated = result.images, result.generated

    config_dict = cfg.model_dump(mode="json")
    photo_ids = [f"{h}@{crop}" if crop else h for (_, h), crop in zip(info.photos, info.crops, strict=False)]
    fp = checkpoint.fingerprint(config_dict, info.base_model, photo_ids, len(class_imgs))
    hooks.progress(JobProgress(phase=JobPhase.CACHING))
    store = compile_store.store_from_settings(settings) if wants_compile(cfg.compile, device) else None
    compiled_key = resident.compile_key(info.base_model, cfg, shape, bool(class_imgs))
    if store is not None:
        store.load(compiled_key)  # compiled on another host or before a restart: a cache hit, not a compile
    trainer = Trainer(cfg, comps, photos, class_imgs, instance_prompt, class_prompt, fingerprint=fp)
    state = checkpoint.load_latest(storage, subject_id, fp)
    resumed_from = 0
    if state is not None:
        trainer.load_state_dict(state)
        resumed_from = trainer.step
        del state
    outer_save = hooks.save_checkpoint
    run_log = RunLog(settings, storage, lease.job_id, config_dict, resumed_from) if lease else None

    def save(step: int, state: dict[str, Any]) -> None:
        checkpoint.save(storage, subject_id, step, state)
        outer_save(step, state)
        if run_log is not None:
            run_log.upload()

    train_started = time.monotonic()
    try:
        stats = trainer.train(
            Hooks(
                progress=hooks.progress,
                may_write=hooks.may_write,
                save_checkpoint=save,
                metrics=run_log.scalars if run_log is not None else hooks.metrics,
            )
        )
    finally:
        if run_log is not None:
            run_log.close()
    train_seconds = time.monotonic() - train_started
    if store is not None:
        store.save(compiled_key)  # what this run compiled, for every other worker

    hooks.progress(JobProgress(phase=JobPhase.SAVING, step=trainer.step, total=cfg.steps))
    key = artifact_key(subject_id, cfg.method)
    kohya: tuple[str, str] | None = None  # (key, sha256) of the kohya/A1111 copy
    with scratch_dir() as tmp:
        if cfg.method == "lora":
            main_path, kohya_path = write_lora(trainer, Path(tmp))
            with kohya_path.open("rb") as f:
                kohya = (kohya_key(subject_id), storage.put(kohya_key(subject_id), f))
        else:
            main_path = write_full(trainer, Path(tmp))
        with main_path.open("rb") as f:
            sha = storage.put(key, f)
    _set_subject(
        settings, subject_id, artifact_key=key, artifact_sha256=sha, status="ready", method=cfg.method
    )
    checkpoint.clear(storage, subject_id)
    validation = None
    if lease is not None and cfg.validation_images:
        validation = _validate(settings, lease, trainer, info, hooks)
    trained = trainer.step - resumed_from
    return TrainingResult(
        subject_id=subject_id,
        artifact_key=key,
        artifact_sha256=sha,
        kohya_key=kohya[0] if kohya else None,
        kohya_sha256=kohya[1] if kohya else None,
        validation=validation,
        image_ids=[im.id for im in validation.images or []] if validation else None,
        method=cfg.method,
        steps=trainer.step,
        resumed_from=resumed_from,
        checkpoints=stats.checkpoints,
        final_loss=stats.last_loss,
        instance_prompt=instance_prompt,
        class_prompt=class_prompt,
        class_images_used=len(class_imgs),
        class_images_generated=generated,
        precision=trainer.precision,
        seconds=round(time.monotonic() - started, 2),
        steps_per_s=round(trained / train_seconds, 3) if train_seconds > 0 and trained else None,
        config=config_dict,
    )


def _validate(
    settings: Settings, lease: jobs.Lease, trainer: Trainer, info: SubjectInfo, hooks: Hooks
) -> TrainingValidation:
    """Make, store and record the test pictures. Best effort: the model is already stored
    and the subject ready, so nothing here may fail the training; it says what happened."""
    from gpu_worker.training.validation import SCHEDULER, make_validation_images

    cfg = trainer.cfg
    prompt = cfg.validation_text(info.token, info.class_noun)
    out = TrainingValidation(prompt=prompt, steps=cfg.validation_steps, scheduler=SCHEDULER)
    try:
        hooks.progress(JobProgress(phase=JobPhase.VALIDATING, step=0, total=cfg.validation_images))
        made = make_validation_images(
            trainer,
            prompt,
            count=cfg.validation_images,
            steps=cfg.validation_steps,
            guidance_scale=cfg.validation_guidance_scale,
            nsfw_filter=settings.nsfw_filter,
        )
        images: list[StoredImage] = []  # the result lists each picture once it is recorded
        out.blocked, out.safety_checked, out.images = made.blocked, made.safety_checked, images
        storage = storage_from_settings(settings)
        with session_scope(settings) as s:  # rows of an earlier attempt would be duplicates
            s.execute(delete(Image).where(Image.job_id == lease.job_id))
        for i, (image, seed) in enumerate(made.images):
            meta = {
                "prompt": prompt,
                "seed": seed,
                "steps": cfg.validation_steps,
                "guidance_scale": cfg.validation_guidance_scale,
                "scheduler": SCHEDULER,
                "base_model": info.base_model,
                "subjects": f"{info.token} {info.class_noun} (#{info.id})",
                "size": f"{image.width}x{image.height}",
                "training_job": lease.job_id,
            }
            key = f"jobs/{lease.job_id}/{i}.png"
            storage.put(key, png_with_metadata(image, meta))
            image_id = jobs.add_image(
                settings,
                lease,
                storage_key=key,
                seed=seed,
                prompt=prompt,
                width=image.width,
                height=image.height,
            )
            images.append(StoredImage(id=image_id, key=key, seed=seed))
            hooks.progress(JobProgress(phase=JobPhase.VALIDATING, step=i + 1, total=cfg.validation_images))
    except (JobCancelled, SoftTimeLimitExceeded, LeaseLost) as exc:
        log.info("validation images stopped early (%s)", type(exc).__name__)
        out.error = "stopped early"
    except Exception as exc:
        log.exception("validation images failed; the trained model is stored and usable")
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def run(ctx: JobContext) -> TrainingResult:
    """The `gpu_worker.train` job (params: a `core.train_request.TrainRequest`); the subject
    defaults to the job's first subject."""
    request = parse_train_request(ctx.params)
    subject_id = request.subject_id or (ctx.subject_ids[0] if ctx.subject_ids else None)
    if subject_id is None:
        raise UserFacingError("This training job names no subject.")
    overrides = request.overrides()
    info = _subject(ctx.settings, subject_id)
    previous = info.status
    _set_subject(ctx.settings, info.id, status="training")

    def may_write() -> bool:
        try:
            jobs.heartbeat(ctx.settings, ctx.lease)
            return True
        except LeaseLost:
            return False

    try:
        return train_subject(
            ctx.settings,
            info.id,
            overrides,
            Hooks(progress=ctx.progress, may_write=may_write),
            lease=ctx.lease,
        )
    except BaseException as exc:
        if _subject(ctx.settings, info.id).status == "ready":
            raise  # this attempt stored its model (it was "training" until then): keep it
        # Cancelled or retried later: back to how it was. Failed for good: say so, unless
        # an earlier training left a usable model (that one still works).
        final = not isinstance(exc, JobCancelled | LeaseLost | KeyboardInterrupt | SoftTimeLimitExceeded)
        final = final and not isinstance(exc, TRANSIENT)
        _set_subject(ctx.settings, info.id, status="failed" if final and previous != "ready" else previous)
        raise
