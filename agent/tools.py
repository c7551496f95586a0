"""The agent's tools: a pydantic argument model and a function acting through `core` each.

Whatever the model asks for, these functions act only for the person who spoke
(`ToolContext.user_id`): every subject, image and job is checked against its owner in
code, quotas are checked by `core.jobs.submit`, and there are no admin tools. Errors come
back as a `tool_output` the model can read and recover from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from agent.memory import latest_photos
from agent.scene import SubjectRef, scene_prompt
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
from core import jobs
from core.db import session_scope
from core.errors import Refused, UserFacingError
from core.models import Job, Subject, User
from core.ownership import own_image, own_job, own_subjects
from core.photos import PhotoRejected, check_photo
from core.quotas import usage
from core.sample_request import parse_sample_request
from core.settings import Settings
from core.storage import storage_from_settings
from core.subjects import (
    MAX_PHOTOS,
    MIN_PHOTOS,
    PhotosNeedConfirmation,
    coach_photos,
    kind_of,
    start_training,
)

log = logging.getLogger(__name__)

ASPECTS = {"square": (None, None), "portrait": (512, 768), "landscape": (768, 512)}


# A refusal or failure the model should explain to the person (not a format mistake); the
# ownership checks in core raise the same class.
ToolError = Refused


@dataclass
class ToolContext:
    """Who is asking, where, and what this platform event has already started."""

    settings: Settings
    user_id: int
    conversation_id: int | None
    event_key: str | None
    job_ids: list[int] = field(default_factory=list)
    side_effects: int = 0

    def next_key(self) -> str | None:
        """`platform:event_id:n` for the n-th side effect of this event, the same on a redelivery.

        Only a side effect that happened counts (`done`), so a refused call shifts nothing."""
        return f"{self.event_key}:{self.side_effects + 1}" if self.event_key else None

    def done(self, job_id: int) -> None:
        self.side_effects += 1
        self.job_ids.append(job_id)


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


# -- helpers -------------------------------------------------------------------------------


def submit_sample(ctx: ToolContext, params: dict[str, Any], subject_ids: list[int]) -> dict[str, Any]:
    request = parse_sample_request(params)  # InvalidSampleRequest is a UserFacingError
    job = jobs.submit(
        ctx.settings,
        kind="sample",
        params=request.model_dump(mode="json", exclude_none=True),
        owner_id=ctx.user_id,
        subject_ids=subject_ids,
        conversation_id=ctx.conversation_id,
        idempotency_key=ctx.next_key(),
    )
    ctx.done(job.id)
    return {
        "job_id": job.id,
        "status": "queued",
        "prompt": request.prompt,
        "n": request.n,
        "note": "The images will be posted in this chat when they are ready.",
    }


# -- the tools -------------------------------------------------------------------------------


def list_subjects(ctx: ToolContext, _: NoArgs) -> dict[str, Any]:
    with session_scope(ctx.settings) as session:
        rows = session.scalars(select(Subject).where(Subject.owner_id == ctx.user_id).order_by(Subject.id))
        return {
            "subjects": [
                {"id": s.id, "name": s.name, "class_noun": s.class_noun, "trained": bool(s.artifact_key)}
                for s in rows
            ]
        }


def _photo_check(ctx: ToolContext, keys: list[str], class_noun: str) -> dict[str, Any] | None:
    """The photo coach's numbers for the photos (what /train would show), so the model does
    not rely on its own impression alone; None when a photo cannot be read."""
    storage = storage_from_settings(ctx.settings)
    photos = [(storage.read_bytes(k), k.rsplit("/", 1)[-1]) for k in keys[:MAX_PHOTOS]]
    try:
        for data, name in photos:
            check_photo(data, name)
    except PhotoRejected:
        return None
    report = coach_photos(ctx.settings, photos, class_noun)
    numbers = {"verdict", "reason", "sharpness", "relative_sharpness", "dark_share", "bright_share"}
    numbers |= {"faces", "crop_side", "copy_of"}
    return {
        "summary": report.summary,
        "photos_used": len(report.kept),
        "photos": [{"photo": s.index + 1, **s.model_dump(include=numbers)} for s in report.photos],
    }


def describe_photos(ctx: ToolContext, args: DescribePhotosArgs) -> dict[str, Any]:
    keys = latest_photos(ctx.settings, ctx.conversation_id, ctx.user_id) if ctx.conversation_id else []
    count = len(keys)
    check = _photo_check(ctx, keys, args.class_noun) if keys else None
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
    """Train on the photos of the person's latest message with photos (core.subjects rules)."""
    settings = ctx.settings
    keys = latest_photos(settings, ctx.conversation_id, ctx.user_id) if ctx.conversation_id else []
    storage = storage_from_settings(settings)
    try:
        started = start_training(
            settings,
            owner_id=ctx.user_id,
            name=args.name,
            class_noun=args.class_noun,
            photos=[(storage.read_bytes(k), k.rsplit("/", 1)[-1]) for k in keys],
            conversation_id=ctx.conversation_id,
            idempotency_key=ctx.next_key(),
            subject_kind=args.subject_kind,
            consent=args.consent_confirmed,
            confirmed=args.photos_confirmed,
        )
    except PhotosNeedConfirmation as exc:  # ask the person; "train anyway" is photos_confirmed
        return {"error": str(exc), "photos_need_confirmation": True}
    ctx.done(started.job_id)
    if started.existing:  # this event already started it
        return {"job_id": started.job_id, "subject_id": started.subject_id, "status": "queued"}
    return {
        "job_id": started.job_id,
        "subject_id": started.subject_id,
        "status": "queued",
        "note": "Training takes a while; progress will be posted in this chat.",
    }


def generate_images(ctx: ToolContext, args: GenerateImagesArgs) -> dict[str, Any]:
    with session_scope(ctx.settings) as session:
        subjects = own_subjects(session, ctx.user_id, args.subject_ids)
        refs = [SubjectRef(s.token, s.class_noun, s.name) for s in subjects]
    width, height = ASPECTS[args.aspect]
    subject_ids = [s.id for s in subjects]
    params = {
        "prompt": scene_prompt(args.prompt, refs),
        "negative_prompt": args.negative_prompt,
        "subject_ids": subject_ids,
        "n": args.n,
        "guidance_scale": args.guidance_scale,
        "steps": args.steps,
        "seed": args.seed,
        "width": width,
        "height": height,
    }
    return submit_sample(ctx, {k: v for k, v in params.items() if v is not None}, subject_ids)


def vary_image(ctx: ToolContext, args: VaryImageArgs) -> dict[str, Any]:
    with session_scope(ctx.settings) as session:
        image, job = own_image(session, ctx.user_id, args.image_id)
        subjects = list(job.subjects)
        refs = [SubjectRef(s.token, s.class_noun, s.name) for s in subjects]
        prompt = scene_prompt(args.prompt, refs) if args.prompt else image.prompt
    subject_ids = [s.id for s in subjects]
    params: dict[str, Any] = {
        "prompt": prompt,
        "subject_ids": subject_ids,
        "n": args.n,
        "variation_of": args.image_id,
        "strength": args.strength,
    }
    if args.seed is not None:
        params["seed"] = args.seed
    return submit_sample(ctx, params, subject_ids)


def upscale_image(ctx: ToolContext, args: ImageArgs) -> dict[str, Any]:
    with session_scope(ctx.settings) as session:
        image, job = own_image(session, ctx.user_id, args.image_id)
        ids = [s.id for s in job.subjects]
        params = {"prompt": image.prompt, "subject_ids": ids, "n": 1, "upscale_of": args.image_id}
    return submit_sample(ctx, params, ids)


def _job_view(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress or {},
        "error": job.error,
        "image_ids": [i.id for i in job.images if i.hidden_at is None],
    }


def job_status(ctx: ToolContext, args: OptionalJobArgs) -> dict[str, Any]:
    with session_scope(ctx.settings) as session:
        if args.job_id is not None:
            return _job_view(own_job(session, ctx.user_id, args.job_id))
        recent = session.scalars(
            select(Job).where(Job.owner_id == ctx.user_id).order_by(Job.id.desc()).limit(5)
        )
        return {"recent_jobs": [_job_view(j) for j in recent]}


def cancel_job(ctx: ToolContext, args: JobArgs) -> dict[str, Any]:
    with session_scope(ctx.settings) as session:
        own_job(session, ctx.user_id, args.job_id)
    return {"job_id": args.job_id, "status": jobs.request_cancel(ctx.settings, args.job_id)}


def my_quota(ctx: ToolContext, _: NoArgs) -> dict[str, Any]:
    with session_scope(ctx.settings) as session:
        user = session.get(User, ctx.user_id)
        if user is None:
            raise ToolError("This person is not known yet.")
        return asdict(usage(session, ctx.settings, user))


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
