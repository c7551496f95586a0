"""DreamBooth training settings: one pydantic model, presets per kind of subject.

Torch-free so the bot, the CLI and the dashboard can validate a config without the GPU
stack. Values resolve in layers, later wins:

    field defaults < preset for the subject kind < deployment file (DREAMBOT_TRAIN_CONFIG)
                   < the job's / CLI's overrides

`None` in `steps`, `learning_rate` and `resolution` means "derive it": steps from the
number of photos, the learning rate from the method, the resolution from the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import UserFacingError

SubjectKind = Literal["object", "pet", "person"]


class TrainConfigError(UserFacingError):
    """A training config (file, job parameters or --set) has a wrong key or value."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    subject_kind: SubjectKind = "object"
    method: Literal["lora", "full"] = Field("lora", description="lora: small, hot-swappable; full: UNet")
    # -- LoRA ---------------------------------------------------------------------------
    lora_rank: int = Field(8, ge=1, le=256)
    lora_alpha: float | None = Field(None, gt=0, description="default: equal to the rank (scale 1)")
    lora_targets: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    # lora: adds a LoRA to the text encoder too; full: fine-tunes the text encoder.
    train_text_encoder: bool = False
    # -- schedule -------------------------------------------------------------------------
    steps: int | None = Field(None, ge=0, description="default: steps_per_photo × photos, clamped")
    steps_per_photo: int = Field(100, ge=1)
    min_steps: int = Field(400, ge=0)
    max_steps: int = Field(1200, ge=1)
    learning_rate: float | None = Field(None, gt=0, description="default: 1e-4 for lora, 5e-6 for full")
    text_encoder_lr: float | None = Field(None, gt=0, description="default: the UNet's rate")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    lr_warmup_steps: int = Field(10, ge=0)
    train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = 1e-8
    use_8bit_adam: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: only when bitsandbytes is installed and CUDA is in use"
    )
    # -- prior preservation -------------------------------------------------------------------
    prior_preservation: bool = True
    prior_loss_weight: float = Field(1.0, ge=0)
    num_class_images: int = Field(200, ge=0)
    class_sample_steps: int = Field(20, ge=1, description="DPM-Solver++ 2M steps per class image")
    class_guidance_scale: float = Field(7.5, ge=1)
    class_batch_size: int | None = Field(
        None,
        ge=1,
        description="class images drawn at once (default: as many as free GPU memory allows, ≤ 32)",
    )
    # -- data -----------------------------------------------------------------------------
    resolution: int | None = Field(None, ge=8, description="default: the model's native size")
    random_flip: bool = False
    instance_prompt: str = "a photo of {token} {class_noun}"
    class_prompt: str = "a photo of {class_noun}"
    # -- precision, memory, speed ---------------------------------------------------------------
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="torch.compile the UNet for training (auto: on CUDA)"
    )
    cuda_graph: Literal["auto", "on", "off"] = Field(
        "auto", description="replay the whole step as one CUDA graph (auto: where possible)"
    )
    # -- loss options ------------------------------------------------------------------------
    offset_noise: float = Field(0.0, ge=0, description="e.g. 0.05: helps very dark/bright images")
    snr_gamma: float | None = Field(None, gt=0, description="min-SNR weighting, 5.0 is typical")
    seed: int = 0
    # -- bookkeeping ---------------------------------------------------------------------------
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")
    progress_interval: float = Field(1.0, gt=0, description="seconds between progress reports")
    preview_interval: float = Field(
        30.0, ge=0, description="seconds between preview thumbnails in the progress (0: none)"
    )
    # -- validation: test pictures with the trained model, posted as the job's images ------------
    validation_images: int = Field(4, ge=0, le=16, description="how many (0: none)")
    validation_prompt: str = "a photo of {token} {class_noun}"
    validation_steps: int = Field(25, ge=1, le=150, description="DPM-Solver++ steps per picture")
    validation_guidance_scale: float = Field(7.5, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) is above max_steps ({self.max_steps})")
        for name in ("instance_prompt", "class_prompt", "validation_prompt"):
            try:
                _fill(getattr(self, name), "t", "c")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name} may only use {{token}} and {{class_noun}} ({exc})") from None
        return self

    # -- derived values ------------------------------------------------------------------------
    def total_steps(self, n_photos: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(self.min_steps, min(self.max_steps, self.steps_per_photo * max(n_photos, 1)))

    def unet_lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-4 if self.method == "lora" else 5e-6

    def resolved(self, *, n_photos: int, resolution: int) -> TrainConfig:
        """A copy with every derived value filled in: what a job really used."""
        return self.model_copy(
            update=dict(
                steps=self.total_steps(n_photos),
                learning_rate=self.unet_lr(),
                text_encoder_lr=self.text_encoder_lr or self.unet_lr(),
                lora_alpha=self.lora_alpha or float(self.lora_rank),
                resolution=self.resolution or resolution,
            )
        )

    def prompts(self, token: str, class_noun: str) -> tuple[str, str]:
        return _fill(self.instance_prompt, token, class_noun), _fill(self.class_prompt, token, class_noun)

    def validation_text(self, token: str, class_noun: str) -> str:
        return _fill(self.validation_prompt, token, class_noun)


def _fill(template: str, token: str, class_noun: str) -> str:
    # `{class}` is accepted as a short alias of `{class_noun}`.
    return template.format(token=token, class_noun=class_noun, **{"class": class_noun})


# Per-kind starting points (tuned after the usual DreamBooth/LoRA advice): people need
# more capacity and steps and a gentler rate; pets sit in between; mirrored objects are
# fine for pets and people, but not for objects with text or a handed shape.
PRESETS: dict[str, dict[str, Any]] = {
    "object": dict(lora_rank=8, steps_per_photo=100, min_steps=400, max_steps=1000, random_flip=False),
    "pet": dict(lora_rank=8, steps_per_photo=100, min_steps=500, max_steps=1200, random_flip=True),
    "person": dict(
        lora_rank=16, steps_per_photo=120, min_steps=600, max_steps=1500, random_flip=True, snr_gamma=5.0
    ),
}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of config keys (JSON is YAML, so one parser serves both)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrainConfigError(f"cannot read the training config {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TrainConfigError(f"the training config {path} is not valid YAML/JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainConfigError(f"the training config {path} must be a mapping of key: value")
    return data


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["steps=10", "random_flip=true", "lora_targets=[to_q, to_v]"]` -> a dict (values as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainConfigError(f"--set takes key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def describe_errors(exc: ValidationError) -> str:
    """A pydantic error about training settings, in one line a person can act on."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "is not a training setting"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def build_config(
    *,
    subject_kind: str | None = None,
    deployment_file: str | Path | None = None,
    files: list[str | Path] | tuple[str | Path, ...] = (),
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Resolve the layers (see the module docstring) into one validated `TrainConfig`.

    The kind comes from the overrides, else the files, else `subject_kind`, else "object";
    its preset applies beneath everything the operator or the person set.
    """
    layers: list[dict[str, Any]] = []
    if deployment_file:
        layers.append(load_config_file(deployment_file))
    layers.extend(load_config_file(f) for f in files)
    layers.append(dict(overrides or {}))
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    kind = merged.get("subject_kind") or subject_kind or "object"
    values = {**PRESETS.get(str(kind), {}), **merged, "subject_kind": kind}
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise TrainConfigError(f"bad training config: {describe_errors(exc)}") from None
