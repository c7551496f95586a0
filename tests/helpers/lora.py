"""Make a subject's LoRA for the tiny model, in the format the trainer writes.

The adapter is a peft LoRA on the UNet's attention projections, exported the way
diffusers' DreamBooth LoRA script does (`get_peft_model_state_dict` ->
`convert_state_dict_to_diffusers` -> `StableDiffusionPipeline.save_lora_weights`), so
`load_lora_weights` reads it exactly as it will read a trained one. Its B matrices are
random (peft starts them at zero, which would change nothing), so it visibly changes
the pictures.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the database parts load lazily: bench/sample.py needs only the LoRA
    from core.models import Job
    from core.settings import Settings

TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def make_lora_bytes(model_dir: Path, seed: int, rank: int = 4, scale: float = 0.5) -> bytes:
    """A `pytorch_lora_weights.safetensors` file's bytes for the UNet in `model_dir`."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every LoRA weight from `seed`: the same seed, the same file
        for name, param in sorted(unet.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
        return (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()


def make_user(settings: Settings, platform_user_id: str = "u1") -> int:
    from sqlalchemy import select

    from core.db import session_scope
    from core.models import User

    with session_scope(settings) as session:
        existing = session.scalar(
            select(User.id).where(User.platform == "test", User.platform_user_id == platform_user_id)
        )
        if existing is not None:
            return existing
        user = User(platform="test", platform_user_id=platform_user_id, display_name=platform_user_id)
        session.add(user)
        session.flush()
        return user.id


def make_subject(
    settings: Settings,
    owner_id: int,
    lora: bytes | None,
    *,
    name: str = "rex",
    token: str = "zwx",
    class_noun: str = "dog",
) -> int:
    """A trained subject whose adapter `lora` is in storage at its artifact key."""
    from core.db import session_scope
    from core.models import Subject
    from core.storage import storage_from_settings

    with session_scope(settings) as session:
        subject = Subject(
            owner_id=owner_id,
            name=name,
            token=token,
            class_noun=class_noun,
            base_model=settings.base_model,
            method="lora",
            status="ready" if lora is not None else "pending",
        )
        session.add(subject)
        session.flush()
        if lora is not None:
            key = f"subjects/{subject.id}/lora.safetensors"
            subject.artifact_key = key
            subject.artifact_sha256 = storage_from_settings(settings).put(key, lora)
        return subject.id


# -- running sampling jobs in-process ------------------------------------------------------


def sample_settings(data_dir: Path, model_dir: Path, **overrides: object) -> Settings:
    """Migrated test settings drawing with the tiny model."""
    from core import migrate
    from tests.helpers.profile import make_test_settings

    settings = make_test_settings(data_dir, base_model=str(model_dir), **overrides)
    migrate.upgrade(settings)
    return settings


def run_sample(
    settings: Settings,
    params: dict[str, object],
    owner_id: int | None = None,
    subject_ids: tuple[int, ...] = (),
    body: object = None,
) -> Job:
    """Submit a sample job and run it here with `run_job` (no Celery worker); the final row."""
    from core import jobs
    from gpu_worker import sampling
    from gpu_worker.runtime import run_job

    job = jobs.submit(settings, kind="sample", params=params, owner_id=owner_id, subject_ids=subject_ids)
    run_job(settings, job.id, "test-worker", body or sampling.run)  # type: ignore[arg-type]
    return jobs.get_job(settings, job.id)
