"""The agent's tools: ToolCall → pydantic arguments → an action in `core.actions` → the
dict the model reads.

Whatever the model asks for, the actions act only for the person who spoke
(`ToolContext.user_id`): every subject, image and job is checked against its owner there,
quotas are checked by `core.jobs.submit`, and there are no admin tools. Errors come back as
a `tool_output` the model can read and recover from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from agent.memory import latest_photos
from agent.tool_args import (
    Args,
    DescribePhotosArgs,
    GenerateImagesArgs,
    ImageArgs,
    JobArgs,
    NoArgs,
    OptionalJobArgs,
    TrainSubjectArgs,
    VaryImageArgs,
)
from agent.toolcalls import ToolCall
from core.actions import images, jobs, people, subjects
from core.actions.actor import Actor
from core.actions.images import JobStarted
from core.actions.jobs import JobView
from core.actions.ownership import NotYours
from core.errors import Refused, UserFacingError
from core.photos import PhotoRejected
from core.storage import storage_from_settings
from core.subjects import MAX_PHOTOS, MIN_PHOTOS, PhotosNeedConfirmation, kind_of

log = logging.getLogger(__name__)

# A refusal or failure the model should explain to the person (not a format mistake); the
# ownership checks in core raise the same class.
ToolError = Refused
# Who is asking, where, and what this platform event has already started.
ToolContext = Actor


@dataclass
class ToolResult:
    output: dict[str, Any]
    invalid: bool = False  # the call itself was malformed (unknown tool, bad arguments)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[Args]
    run: Callable[[ToolContext, Any], dict[str, Any]]

    def spec(self) -> dict[str, Any]:
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return {"name": self.name, "description": self.description, "parameters": schema}


# -- views: what the model reads -------------------------------------------------------------


def _started(started: JobStarted) -> dict[str, Any]:
    return {
        "job_id": started.job_id,
        "status": "queued",
        "prompt": started.prompt,
        "n": started.n,
        "note": "The images will be posted in this chat when they are ready.",
    }


def _job_view(job: JobView) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress.to_json(),
        "error": job.error,
        "image_ids": job.image_ids,
    }


# -- the tools -------------------------------------------------------------------------------


def list_subjects(ctx: ToolContext, _: NoArgs) -> dict[str, Any]:
    return {
        "subjects": [
            {"id": s.id, "name": s.name, "class_noun": s.class_noun, "trained": s.trained}
            for s in subjects.list_subjects(ctx)
        ]
    }


def _photos(ctx: ToolContext) -> list[tuple[bytes, str]]:
    """The photos of the person's latest message with photos in this conversation."""
    if ctx.conversation_id is None:
        return []
    storage = storage_from_settings(ctx.settings)
    keys = latest_photos(ctx.settings, ctx.conversation_id, ctx.user_id)
    return [(storage.read_bytes(k), k.rsplit("/", 1)[-1]) for k in keys]


def _photo_check(ctx: ToolContext, photos: list[tuple[bytes, str]], class_noun: str) -> dict[str, Any] | None:
    """The photo coach's numbers for the photos (what /train would show), so the model does
    not rely on its own impression alone; None when a photo cannot be read."""
    try:
        report = subjects.coach(ctx.settings, photos[:MAX_PHOTOS], class_noun)
    except PhotoRejected:
        return None
    numbers = {"verdict", "reason", "sharpness", "relative_sharpness", "dark_share", "bright_share"}
    numbers |= {"faces", "crop_side", "copy_of"}
    return {
        "summary": report.summary,
        "photos_used": len(report.kept),
        "photos": [{"photo": s.index + 1, **s.model_dump(include=numbers)} for s in report.photos],
    }


def describe_photos(ctx: ToolContext, args: DescribePhotosArgs) -> dict[str, Any]:
    photos = _photos(ctx)
    count = len(photos)
    check = _photo_check(ctx, photos, args.class_noun) if photos else None
    warnings = [
        f"Photo {p['photo']}: {p['reason']}" for p in (check or {}).get("photos", []) if p["verdict"] != "ok"
    ]
    if count < MIN_PHOTOS:
        warnings.append(f"Only {count} photo(s) here; training needs {MIN_PHOTOS} to {MAX_PHOTOS}.")
    if count > MAX_PHOTOS:
        warnings.append(f"{count} photos; only the first {MAX_PHOTOS} would be used.")
    if not args.one_subject:
        warnings.append("Some photos show more than one subject; crop to one subject or pick other photos.")
    if args.blurry:
        warnings.append("Blurry or dark photos teach blur; sharp, well-lit ones work best.")
    if args.accessories:
        warnings.append(f"{', '.join(args.accessories)} will show up in the pictures unless removed.")
    if not args.face_visible and kind_of(args.class_noun) != "object":
        warnings.append("The face is hard to see; add a few clear front views.")
    return {
        "photos": count,
        "class_noun": args.class_noun,
        "subject_kind": kind_of(args.class_noun),
        "warnings": warnings,
        "photo_check": check,  # measured: the same scores /train shows before it trains
        "ready_to_train": count >= MIN_PHOTOS and args.one_subject,
    }


def train_subject(ctx: ToolContext, args: TrainSubjectArgs) -> dict[str, Any]:
    """Train on the photos of the person's latest message with photos."""
    request = subjects.Train(
        name=args.name,
        class_noun=args.class_noun,
        photos=_photos(ctx),
        subject_kind=args.subject_kind,
        consent=args.consent_confirmed,
        confirmed=args.photos_confirmed,
    )
    try:
        started = subjects.train(ctx, request)
    except PhotosNeedConfirmation as exc:  # ask the person; "train anyway" is photos_confirmed
        return {"error": str(exc), "photos_need_confirmation": True}
    if started.existing:  # this event already started it
        return {"job_id": started.job_id, "subject_id": started.subject_id, "status": "queued"}
    return {
        "job_id": started.job_id,
        "subject_id": started.subject_id,
        "status": "queued",
        "note": "Training takes a while; progress will be posted in this chat.",
    }


def generate_images(ctx: ToolContext, args: GenerateImagesArgs) -> dict[str, Any]:
    try:
        return _started(images.generate(ctx, images.Generate.model_validate(args.model_dump())))
    except NotYours as exc:  # the model's way out: look the ids up
        raise NotYours(exc.kind, exc.item_id, "; use list_subjects") from None


def vary_image(ctx: ToolContext, args: VaryImageArgs) -> dict[str, Any]:
    return _started(images.vary(ctx, images.Vary.model_validate(args.model_dump())))


def upscale_image(ctx: ToolContext, args: ImageArgs) -> dict[str, Any]:
    return _started(images.upscale(ctx, args.image_id))


def job_status(ctx: ToolContext, args: OptionalJobArgs) -> dict[str, Any]:
    if args.job_id is not None:
        return _job_view(jobs.status(ctx, args.job_id))
    return {"recent_jobs": [_job_view(j) for j in jobs.recent(ctx)]}


def cancel_job(ctx: ToolContext, args: JobArgs) -> dict[str, Any]:
    return {"job_id": args.job_id, "status": jobs.cancel(ctx, args.job_id)}


def my_quota(ctx: ToolContext, _: NoArgs) -> dict[str, Any]:
    return asdict(people.usage(ctx))


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "list_subjects", "This person's subjects (id, name, class noun, trained).", NoArgs, list_subjects
        ),
        Tool(
            "describe_photos",
            "Report what you see in the photos just sent, before training: returns warnings to pass on.",
            DescribePhotosArgs,
            describe_photos,
        ),
        Tool(
            "train_subject",
            "Train a new subject on the photos in the person's latest message with photos (3-10 photos).",
            TrainSubjectArgs,
            train_subject,
        ),
        Tool(
            "generate_images",
            "Make n pictures of the given subjects in the scene described by prompt (English).",
            GenerateImagesArgs,
            generate_images,
        ),
        Tool(
            "vary_image",
            "Variations of an earlier image, optionally with a new scene.",
            VaryImageArgs,
            vary_image,
        ),
        Tool("upscale_image", "A x2 larger, sharper copy of an earlier image.", ImageArgs, upscale_image),
        Tool("job_status", "Status of one job, or of the person's recent jobs.", OptionalJobArgs, job_status),
        Tool("cancel_job", "Cancel one of the person's jobs.", JobArgs, cancel_job),
        Tool("my_quota", "The person's usage and limits today.", NoArgs, my_quota),
    )
}


def tool_specs() -> list[dict[str, Any]]:
    return [t.spec() for t in TOOLS.values()]


def openai_tools() -> list[dict[str, Any]]:
    """The same tools in the `tools=` format, for endpoints with native tool calling."""
    return [{"type": "function", "function": t.spec()} for t in TOOLS.values()]


def run_tool(ctx: ToolContext, call: ToolCall) -> ToolResult:
    """Validate and run one call. Never raises: every outcome is an output for the model."""
    tool = TOOLS.get(call.name)
    if tool is None:
        return ToolResult(
            {
                "tool": call.name,
                "error": f"There is no tool named {call.name!r}. Available: {', '.join(TOOLS)}.",
            },
            invalid=True,
        )
    try:
        args = tool.args.model_validate(call.arguments)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        return ToolResult(
            {
                "tool": call.name,
                "error": f"Invalid arguments ({problems}). Fix them and call the tool again.",
            },
            invalid=True,
        )
    try:
        return ToolResult({"tool": call.name, **tool.run(ctx, args)})
    except UserFacingError as exc:
        return ToolResult({"tool": call.name, "error": str(exc)})
    except Exception:
        log.exception("tool %s failed", call.name)
        return ToolResult({"tool": call.name, "error": "Something went wrong on our side; try again later."})
