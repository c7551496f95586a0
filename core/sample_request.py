"""What a person may ask the sampler for, checked before anything reaches a GPU.

Torch-free on purpose: the bot, the agent's tools and the CLI validate a request with
`parse_sample_request` before submitting a job, and the worker validates it again from
`job.params`. Errors come back as `InvalidSampleRequest`, a `UserFacingError` whose
message a person understands ("steps must be between 1 and 100 (you asked for 0)").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import UserFacingError

SCHEDULERS = ("dpmpp_2m_karras", "euler_a", "ddim")
SchedulerName = Literal["dpmpp_2m_karras", "euler_a", "ddim"]
MAX_IMAGES = 8
MAX_STEPS = 100
MIN_SIDE, MAX_SIDE = 64, 1024
MAX_UPSCALED_SIDE = 2048  # a x2 upscale of a MAX_SIDE picture
MAX_SUBJECTS = 3
MAX_SEED = 2**31 - 1  # images.seed is a 32-bit INTEGER column
DEFAULT_VARIATION_STRENGTH = 0.6
DEFAULT_UPSCALE_STRENGTH = 0.35

# How each field is named to a person, and what a good value looks like.
_LABELS: dict[str, tuple[str, str]] = {
    "prompt": ("the description", "up to 1000 characters"),
    "negative_prompt": ("the negative prompt", "up to 1000 characters"),
    "subject_ids": ("the subjects", f"at most {MAX_SUBJECTS} of your subjects"),
    "n": ("the number of images", f"between 1 and {MAX_IMAGES}"),
    "steps": ("steps", f"between 1 and {MAX_STEPS}"),
    "guidance_scale": ("guidance", "between 1 and 20"),
    "scheduler": ("the scheduler", "one of " + ", ".join(SCHEDULERS)),
    "seed": ("the seed", f"a whole number from 0 to {MAX_SEED}"),
    "width": ("width", f"a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}"),
    "height": ("height", f"a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}"),
    "variation_of": ("the image to vary", "the number of one of your earlier images"),
    "upscale_of": ("the image to upscale", "the number of one of your earlier images"),
    "strength": ("strength", "between 0.05 and 1"),
}


class InvalidSampleRequest(UserFacingError):
    """A picture request that cannot be done as asked; the message says how to fix it."""


class SampleRequest(BaseModel):
    """One sampling job's parameters (stored as `job.params`)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str = Field("", max_length=1000)
    negative_prompt: str = Field("", max_length=1000)
    subject_ids: list[int] = Field(default_factory=list, max_length=MAX_SUBJECTS)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    steps: int = Field(30, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(7.5, ge=1.0, le=20.0)
    scheduler: SchedulerName = "dpmpp_2m_karras"
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    width: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE)
    height: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE)
    variation_of: int | None = Field(None, ge=1)
    upscale_of: int | None = Field(None, ge=1)
    strength: float | None = Field(None, ge=0.05, le=1.0)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError("not a multiple of 8")
        return v

    @field_validator("subject_ids")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        return list(dict.fromkeys(v))  # the same subject twice is once

    @model_validator(mode="after")
    def _consistent(self) -> SampleRequest:
        if self.variation_of is not None and self.upscale_of is not None:
            raise ValueError("ask for a variation or an upscale, not both at once")
        if not self.prompt and self.source_image_id is None:
            raise ValueError("please describe the picture you want")
        if self.upscale_of is not None and (self.width or self.height):
            raise ValueError("an upscale is always twice the size of the original; leave width/height out")
        return self

    @property
    def source_image_id(self) -> int | None:
        return self.variation_of if self.variation_of is not None else self.upscale_of

    @property
    def effective_strength(self) -> float:
        if self.strength is not None:
            return self.strength
        return DEFAULT_UPSCALE_STRENGTH if self.upscale_of is not None else DEFAULT_VARIATION_STRENGTH

    def seeds(self, base: int) -> list[int]:
        """Each image's seed: consecutive from the request's (or a drawn) base seed."""
        start = self.seed if self.seed is not None else base
        return [(start + i) % (MAX_SEED + 1) for i in range(self.n)]


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    field = loc[0] if loc else ""
    if not field:  # a whole-request rule: its message is already for people
        return str(error.get("msg", "")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return f"I don't know the option {field!r}"
    label, expected = _LABELS.get(field, (field, "a valid value"))
    got = error.get("input")
    shown = "" if got is None or isinstance(got, dict | list) else f" (you asked for {str(got)[:40]!r})"
    return f"{label} must be {expected}{shown}"


def parse_sample_request(params: Mapping[str, Any]) -> SampleRequest:
    """Validate `params` (a job's params or a tool's arguments) or raise `InvalidSampleRequest`."""
    try:
        return SampleRequest.model_validate(dict(params))
    except ValidationError as exc:
        problems = list(dict.fromkeys(_describe(e) for e in exc.errors()))
        raise InvalidSampleRequest("I can't make that picture: " + "; ".join(problems) + ".") from None


def compose_prompt(prompt: str, subjects: Iterable[tuple[str, str]]) -> str:
    """Make sure the prompt names each subject as "token class_noun".

    A bare token becomes "token class_noun"; a subject not mentioned at all is put in
    front ("a photo of zwx dog, ..."), so the model never has to remember to do it.
    """
    missing: list[str] = []
    for token, class_noun in subjects:
        phrase = f"{token} {class_noun}"
        if re.search(rf"\b{re.escape(phrase)}\b", prompt, flags=re.IGNORECASE):
            continue
        bare = re.compile(rf"\b{re.escape(token)}\b", flags=re.IGNORECASE)
        if bare.search(prompt):
            prompt = bare.sub(phrase, prompt, count=1)
        else:
            missing.append(phrase)
    if missing:
        lead = "a photo of " + " and ".join(missing)
        prompt = f"{lead}, {prompt}" if prompt else lead
    return prompt
