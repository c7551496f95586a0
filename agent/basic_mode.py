"""Basic mode: chat without a language model, through the very tools the agent calls.

Used for every message when no LLM is configured, and for a message whose first model
call failed (the endpoint is down, refuses the key, times out, or the day's budget is
spent). `agent/basic_intent.py` reads the message; this module carries the intent out
with `run_tool` — the same argument validation, ownership checks and quotas as the LLM
agent — and writes the reply. Every reply says which mode answered and how to get the
smarter one. Runs in a worker thread (database work).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from agent.basic_intent import Intent, Known, interpret
from agent.chat_mode import ENABLE_HINT
from agent.toolcalls import ToolCall
from agent.tools import ToolContext, run_tool
from core.actions import images
from core.actions.subjects import list_subjects
from core.db import session_scope
from core.enums import JobState
from core.errors import UserFacingError
from core.job_progress import JobProgress
from core.models import ConversationMessage, Image, Job
from core.subjects import MAX_PHOTOS, MIN_PHOTOS, kind_of

NO_LLM_NOTE = f"(Basic mode — {ENABLE_HINT}.)"
MEANWHILE = "Meanwhile, in basic mode: "
BASICS = (
    "In basic mode I understand simple requests: “put Rex on the moon”, “Rex as a watercolor, 4 of "
    "them”, “again”, “bigger”, “cancel”, “my quota”, “status”, and 3–10 photos sent with “this is "
    "Rex, a dog” to train."
)
UNFINISHED = ("queued", "running")


def respond(ctx: ToolContext, text: str, n_photos: int, *, llm_problem: str | None = None) -> str:
    """Do what `text` asks, if basic mode understands it, and say what happened.

    `llm_problem`: the polite sentence about a configured LLM that failed (None: no LLM
    is configured); it always comes first, then what basic mode did about the message."""
    subjects, offer = _known(ctx)
    intent = interpret(text, subjects, has_photos=n_photos > 0, offer=offer)
    said = _act(ctx, intent, n_photos, subjects)
    if llm_problem is None:
        return f"{said}\n\n{NO_LLM_NOTE}"
    if intent.kind in ("unknown", "help"):
        return f"{llm_problem} {BASICS}"
    return f"{llm_problem}\n\n{MEANWHILE}{said}"


def _known(ctx: ToolContext) -> tuple[list[Known], str]:
    """The person's subjects and basic mode's last reply in this thread (an offer to train)."""
    subjects = [Known(r.id, r.name, r.class_noun, r.trained) for r in list_subjects(ctx)]
    if ctx.conversation_id is None:
        return subjects, ""
    with session_scope(ctx.settings) as s:
        offer = s.scalar(
            select(ConversationMessage.content)
            .where(
                ConversationMessage.conversation_id == ctx.conversation_id,
                ConversationMessage.role == "assistant",
            )
            .order_by(ConversationMessage.id.desc())
            .limit(1)
        )
    return subjects, offer or ""


def _tool(ctx: ToolContext, tool: str, /, **arguments: Any) -> dict[str, Any]:
    return run_tool(ctx, ToolCall(tool, arguments)).output


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _pictures(n: int) -> str:
    return f"{n} picture{'s' * (n != 1)}"


def _act(ctx: ToolContext, intent: Intent, n_photos: int, subjects: list[Known]) -> str:
    handler = _HANDLERS[intent.kind]
    try:
        return handler(ctx, intent, n_photos, subjects)
    except UserFacingError as exc:
        return str(exc)


def _generate(ctx: ToolContext, intent: Intent, _n: int, subjects: list[Known]) -> str:
    n = intent.n or 1
    out = _tool(ctx, "generate_images", subject_ids=list(intent.subject_ids), prompt=intent.scene, n=n)
    if "error" in out:
        return str(out["error"])
    names = " and ".join(s.name for s in subjects if s.id in intent.subject_ids)
    who = f" with {names}" if names else ""
    return f"On it: {_pictures(n)} of “{intent.scene}”{who} (job #{out['job_id']}); they'll appear here."


def _again(ctx: ToolContext, intent: Intent, _n: int, _s: list[Known]) -> str:
    started = images.again(ctx, intent.n)
    if started is None:
        return "There's nothing to repeat yet — ask for a picture first, e.g. “put Rex on the moon”."
    return f"Again: {_pictures(started.n)} coming up (job #{started.job_id})."


def _bigger(ctx: ToolContext, _i: Intent, _n: int, _s: list[Known]) -> str:
    with session_scope(ctx.settings) as s:
        pending = s.scalar(
            select(Job.id)
            .where(Job.owner_id == ctx.user_id, Job.kind == "sample", Job.status.in_(UNFINISHED))
            .limit(1)
        )
        image_id = s.scalar(
            select(Image.id)
            .join(Job, Job.id == Image.job_id)
            .where(Job.owner_id == ctx.user_id, Image.hidden_at.is_(None))
            .order_by(Image.id.desc())
            .limit(1)
        )
    if pending is not None:
        return f"Your latest pictures (job #{pending}) aren't finished yet; say “bigger” again when they're here."
    if image_id is None:
        return "There's no picture to make bigger yet — ask for one first, e.g. “put Rex on the moon”."
    out = _tool(ctx, "upscale_image", image_id=image_id)
    if "error" in out:
        return str(out["error"])
    return f"Making image #{image_id} twice as big (job #{out['job_id']})."


def _cancel(ctx: ToolContext, intent: Intent, _n: int, _s: list[Known]) -> str:
    job_id = intent.job_id
    if job_id is None:
        with session_scope(ctx.settings) as s:
            job_id = s.scalar(
                select(Job.id)
                .where(Job.owner_id == ctx.user_id, Job.status.in_(UNFINISHED))
                .order_by(Job.id.desc())
                .limit(1)
            )
    if job_id is None:
        return "You have nothing queued or running to cancel."
    out = _tool(ctx, "cancel_job", job_id=job_id)
    if "error" in out:
        return str(out["error"])
    word = {"cancelled": "cancelled", "running": "stopping"}.get(str(out["status"]), str(out["status"]))
    return f"Job #{job_id}: {word}."


def _quota(ctx: ToolContext, _i: Intent, _n: int, _s: list[Known]) -> str:
    u = _tool(ctx, "my_quota")
    if "error" in u:
        return str(u["error"])
    return (
        f"Today: {u['images_today']}/{u['images_per_day']} images, {u['trainings_today']}/"
        f"{u['trainings_per_day']} trainings; {u['active_jobs']}/{u['max_concurrent_jobs']} jobs running "
        "or queued."
    )


def _status(ctx: ToolContext, _i: Intent, _n: int, _s: list[Known]) -> str:
    rows = _tool(ctx, "job_status").get("recent_jobs") or []
    if not rows:
        return "You have no jobs yet."
    lines = []
    for j in rows:
        p = JobProgress.read(j.get("progress"))
        pct = ""
        if p.total and p.step is not None and j["status"] == JobState.RUNNING:
            pct = f" {round(100 * p.step / p.total)}%"
        lines.append(f"• #{j['job_id']} {j['kind']} — {j['status']}{pct}")
    return "Your recent jobs:\n" + "\n".join(lines)


def _subjects(_ctx: ToolContext, _i: Intent, _n: int, subjects: list[Known]) -> str:
    if not subjects:
        return "You have no subjects yet: send 3–10 photos with “this is Rex, a dog”."
    return (
        "Your subjects: "
        + ", ".join(f"{s.name} ({s.class_noun}{'' if s.trained else ', still training'})" for s in subjects)
        + "."
    )


def _offer(_ctx: ToolContext, intent: Intent, n_photos: int, _s: list[Known]) -> str:
    if not MIN_PHOTOS <= n_photos <= MAX_PHOTOS:
        return (
            f"Training needs {MIN_PHOTOS}–{MAX_PHOTOS} photos in one message; you sent {n_photos}. "
            f"Send them together with “this is {intent.name}, {_a(intent.class_noun)}”."
        )
    person = kind_of(intent.class_noun) == "person"
    consent = " — and since it's a person, add “I have consent” if they agreed" if person else ""
    return (
        f"Got {n_photos} photos of {intent.name} ({_a(intent.class_noun)}). Say “train {intent.name} as "
        f"{_a(intent.class_noun)}” (or just “yes”) to start training on them{consent}."
    )


def _train(ctx: ToolContext, intent: Intent, _n: int, _s: list[Known]) -> str:
    out = _tool(
        ctx,
        "train_subject",
        name=intent.name,
        class_noun=intent.class_noun,
        consent_confirmed=intent.consent,
        photos_confirmed=intent.anyway,
    )
    if out.get("photos_need_confirmation"):  # the photo check's question, and how to answer it
        consent = ", I have consent" if intent.consent else ""
        return (
            f"{out['error']}\nSay “train {intent.name} as {_a(intent.class_noun)} anyway{consent}” "
            "to train on them as they are, or send other photos."
        )
    if "error" in out:
        return str(out["error"])
    return f"Training {intent.name} has started (job #{out['job_id']}); I'll post its progress here."


def _ask_name(*_: Any) -> str:
    return "Nice photos! Who is this? Say e.g. “this is Rex, a dog” and I'll offer to train on them."


def _ask_class(_ctx: ToolContext, intent: Intent, *_: Any) -> str:
    return f"What is {intent.name} — a dog, a cat, a person, a mug? Say e.g. “this is {intent.name}, a dog”."


def _unknown_subject(_ctx: ToolContext, intent: Intent, _n: int, subjects: list[Known]) -> str:
    if subjects:
        mine = ", ".join(f"{s.name} ({s.class_noun})" for s in subjects)
        return f"I don't know your {intent.noun} yet; your subjects are {mine}. Name one, e.g. “put {subjects[0].name} on the moon”."
    return f"I don't know your {intent.noun} yet. Send 3–10 photos of it with “this is Rex, {_a(intent.noun)}” to train it first."


def _help(*_: Any) -> str:
    return BASICS


def _unknown(*_: Any) -> str:
    return "Sorry, I didn't understand that. " + BASICS


_HANDLERS = {
    "generate": _generate,
    "again": _again,
    "bigger": _bigger,
    "cancel": _cancel,
    "quota": _quota,
    "status": _status,
    "subjects": _subjects,
    "offer_train": _offer,
    "train": _train,
    "ask_name": _ask_name,
    "ask_class": _ask_class,
    "unknown_subject": _unknown_subject,
    "help": _help,
    "unknown": _unknown,
}
