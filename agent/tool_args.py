"""Tool arguments as pydantic models: what the model may pass, validated before anything runs.

Field descriptions and limits show up in the tool list the model reads (`prompt.render_tool`)
and in `tools=` for endpoints with native tool calling.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Args(BaseModel):
    # Models add stray keys; ignoring them is kinder than a round trip.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class NoArgs(Args):
    pass


class DescribePhotosArgs(Args):
    class_noun: str = Field(
        ..., min_length=1, max_length=40, description="what the photos show: dog, woman, mug"
    )
    one_subject: bool = Field(True, description="every photo shows the same single subject")
    blurry: bool = Field(False, description="some photos are blurry or very dark")
    face_visible: bool = Field(True, description="the face (or front) is clearly visible")
    accessories: list[str] = Field(default_factory=list, description="e.g. sunglasses, hat, costume")
    notes: str = Field("", max_length=300)


class TrainSubjectArgs(Args):
    name: str = Field(..., min_length=1, max_length=40, description="what the person calls it: Rex")
    class_noun: str = Field(..., min_length=1, max_length=40, description="one English noun: dog")
    subject_kind: Literal["object", "pet", "person"] | None = None
    consent_confirmed: bool = Field(
        False,
        description="only true if the person explicitly confirmed they have the right to use "
        "these photos (needed for photos of a person; ask them first)",
    )
    photos_confirmed: bool = Field(
        False,
        description="only true if describe_photos (or an earlier train_subject) reported problems "
        "with the photos and the person said to train anyway",
    )


class GenerateImagesArgs(Args):
    subject_ids: list[int] = Field(default_factory=list, max_length=3)
    prompt: str = Field(..., min_length=1, max_length=800, description="the scene, in English")
    negative_prompt: str = Field("", max_length=500)
    n: int = Field(1, ge=1, le=8)
    guidance_scale: float | None = Field(None, ge=1, le=20)
    steps: int | None = Field(None, ge=1, le=100)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    aspect: Literal["square", "portrait", "landscape"] = "square"

    @model_validator(mode="before")
    @classmethod
    def _single_subject(cls, data: Any) -> Any:
        # `subject_id: 3` is the most common slip; it means what it says.
        if isinstance(data, dict) and "subject_ids" not in data and "subject_id" in data:
            sid = data["subject_id"]
            data = {**data, "subject_ids": sid if isinstance(sid, list) else [sid]}
        return data


class VaryImageArgs(Args):
    image_id: int
    prompt: str | None = Field(None, max_length=800, description="optional new scene, in English")
    strength: float = Field(0.6, ge=0.05, le=1.0, description="how far from the original")
    n: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class ImageArgs(Args):
    image_id: int


class OptionalJobArgs(Args):
    job_id: int | None = None


class JobArgs(Args):
    job_id: int
