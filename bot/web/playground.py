"""The web playground: a chat page at `/` for trying dreambot without Discord or Slack.

Each browser is its own person (a random id in a signed cookie). Bound to anything but
loopback it asks for an admin login first. Like the other adapters it only converts:
form posts become `ConversationService` calls, and the page's live timeline (Server-Sent
Events) is read from the database: the person's messages, job cards and images.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select

from agent.chat_mode import chat_status
from bot.chat.cards import image_buttons, render_card
from bot.chat.delivery import OutMessage, Target, job_snapshot
from bot.chat.service import ConversationService, Origin, Reply, Upload
from core import stats
from core.db import session_scope
from core.enums import JobState, Platform
from core.errors import UserFacingError
from core.job_progress import JobProgress
from core.models import Conversation, ConversationMessage, Image, Job, User
from core.names import NameRefused, subject_names
from core.names import class_noun as checked_class_noun
from core.photo_quality import PhotoReport
from core.settings import LOOPBACK_HOSTS, Settings
from core.storage import storage_from_settings
from core.uploads import CHUNK_BYTES, MAX_TOTAL_BYTES, UploadBudget, UploadTooLarge

COOKIE = "dreambot_web"
PLATFORM = Platform.WEB
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
STREAM_INTERVAL = 0.5
MAX_FILES = 10
# Whole request bodies, counted by FastAPI while they arrive (and refused at once on a
# Content-Length over it): the photos' limit plus room for the text fields and multipart
# framing on the upload routes; a small form everywhere else.
MAX_UPLOAD_REQUEST = MAX_TOTAL_BYTES + 2**20
MAX_FORM_REQUEST = 64 * 1024


class WebPoster:
    """Delivery for the playground: the page reads the database itself, so posting is
    recording that the item is visible, and every nonce is already 'found'."""

    async def post(self, target: Target, message: OutMessage, nonce: str) -> str:
        return f"web-{nonce}"

    async def edit(self, target: Target, message_id: str, message: OutMessage) -> None:
        return None

    async def find(self, target: Target, nonce: str, message: OutMessage) -> str | None:
        return f"web-{nonce}"


def _visitor(request: Request, settings: Settings) -> str:
    """The browser's person id from its signed cookie ('' when it has none yet)."""
    raw = request.cookies.get(COOKIE, "")
    try:
        return str(URLSafeSerializer(settings.session_secret_value(), salt="playground").loads(raw))
    except BadSignature:
        return ""


def _require_login(request: Request, settings: Settings) -> None:
    """Off loopback the playground is for logged-in admins only."""
    if settings.web_host in LOOPBACK_HOSTS:
        return
    from bot.web.dashboard.auth import read_session

    if read_session(request) is None:
        raise HTTPException(303, "log in first", headers={"Location": "/admin/login?next=/"})


def _origin(visitor: str, event_id: str = "") -> Origin:
    return Origin(PLATFORM, visitor, "web visitor", channel_id=visitor, event_id=event_id)


async def read_uploads(files: list[UploadFile] | None) -> list[Upload]:
    """The form's files as `Upload`s, within `core.uploads`' limits.

    Starlette has spooled each file to a temporary file (on disk past 1 MB) while the body
    arrived; the sizes it counted are checked before anything is read back into memory,
    and reading stops past a limit all the same."""
    chosen = [f for f in files or [] if f.filename]
    if len(chosen) > MAX_FILES:
        raise HTTPException(413, f"Send at most {MAX_FILES} files at once.")
    budget = UploadBudget()
    try:
        budget.check_declared([(str(f.filename), f.size) for f in chosen])
        return [Upload(str(f.filename), await budget.read(str(f.filename), _chunks(f))) for f in chosen]
    except UploadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


def _reply(reply: Reply) -> JSONResponse:
    return JSONResponse(
        {
            "text": reply.text,
            "job_ids": reply.job_ids,
            "duplicate": reply.duplicate,
            "recorded": reply.recorded,
            "needs_consent": reply.needs_consent,
            "photo_check": _photo_check(reply.photo_check) if reply.photo_check else None,
            "delete_job_id": reply.delete_job_id,
        }
    )


def _photo_check(report: PhotoReport) -> dict[str, Any]:
    """What the train form shows: a badge per photo (by the order chosen) and the summary."""
    return {
        "summary": report.summary,
        "needs_confirmation": report.needs_confirmation,
        "photos": [s.model_dump(include={"index", "filename", "verdict", "reason"}) for s in report.photos],
    }


def current_visitor(request: Request) -> str:
    """The person behind this request (a dependency of every /api route)."""
    settings: Settings = request.app.state.settings
    _require_login(request, settings)
    who = _visitor(request, settings)
    if not who:
        raise HTTPException(400, "Reload the page to start a session.")
    return who


Visitor = Annotated[str, Depends(current_visitor)]


def playground_router(settings: Settings, service: ConversationService) -> APIRouter:
    router = APIRouter(max_body_size=MAX_FORM_REQUEST)

    @router.get("/", response_class=HTMLResponse)
    def page(request: Request) -> HTMLResponse:
        _require_login(request, settings)
        # Security headers: bot/web/security.py adds them to every response.
        response = TEMPLATES.TemplateResponse(
            request,
            "playground.html",
            {"max_upload_mb": MAX_TOTAL_BYTES // 2**20, "chat": chat_status(settings)},
        )
        if not _visitor(request, settings):
            token = URLSafeSerializer(settings.session_secret_value(), salt="playground").dumps(
                secrets.token_hex(8)
            )
            response.set_cookie(
                COOKIE,
                token,
                httponly=True,
                samesite="lax",
                max_age=365 * 24 * 3600,
                secure=request.url.scheme == "https",
            )
        return response

    @router.post("/api/chat", max_body_size=MAX_UPLOAD_REQUEST, form_limits={"max_files": MAX_FILES})
    async def chat(
        who: Visitor,
        text: Annotated[str, Form()] = "",
        event_id: Annotated[str, Form()] = "",
        files: Annotated[list[UploadFile] | None, File()] = None,
    ) -> JSONResponse:
        return _reply(await service.chat(_origin(who, event_id), text, await read_uploads(files)))

    @router.post("/api/train", max_body_size=MAX_UPLOAD_REQUEST, form_limits={"max_files": MAX_FILES})
    async def train(
        who: Visitor,
        name: Annotated[str, Form()],
        class_noun: Annotated[str, Form()] = "",
        event_id: Annotated[str, Form()] = "",
        files: Annotated[list[UploadFile] | None, File()] = None,
        consent: Annotated[bool, Form()] = False,
        keep_photos: Annotated[bool, Form()] = False,
        confirmed: Annotated[bool, Form()] = False,  # the person saw the photo check and trains anyway
    ) -> JSONResponse:
        try:  # before the photos are read back from their temporary files
            subject_names(name, class_noun)
        except NameRefused as exc:
            return _reply(Reply(str(exc)))
        uploads = await read_uploads(files)
        origin = _origin(who, event_id)
        return _reply(await service.train(origin, name, class_noun, uploads, consent, keep_photos, confirmed))

    @router.post("/api/photos/check", max_body_size=MAX_UPLOAD_REQUEST, form_limits={"max_files": MAX_FILES})
    async def photos_check(
        who: Visitor,
        class_noun: Annotated[str, Form()] = "",
        files: Annotated[list[UploadFile] | None, File()] = None,
    ) -> JSONResponse:
        """The photo coach's verdicts for the chosen photos, before Train is pressed."""
        try:  # the class noun first, as /api/train checks it: before any photo is read
            noun = checked_class_noun(class_noun)
            report = await service.check_photos(noun, await read_uploads(files))
        except UserFacingError as exc:
            return JSONResponse({"error": str(exc)})
        return JSONResponse(_photo_check(report))

    @router.post("/api/imagine")
    async def imagine(
        who: Visitor,
        prompt: Annotated[str, Form()],
        n: Annotated[int, Form()] = 4,
        event_id: Annotated[str, Form()] = "",
    ) -> JSONResponse:
        return _reply(await service.imagine(_origin(who, event_id), prompt, max(1, min(n, 8))))

    @router.post("/api/press")
    async def press(
        who: Visitor, custom_id: Annotated[str, Form()], event_id: Annotated[str, Form()] = ""
    ) -> JSONResponse:
        return _reply(await service.press(_origin(who, event_id), custom_id))

    @router.get("/api/feed")
    async def feed(who: Visitor) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(timeline, settings, who))

    @router.get("/api/events")
    async def events(who: Visitor, request: Request) -> StreamingResponse:
        return StreamingResponse(_stream(settings, who, request), media_type="text/event-stream")

    @router.get("/api/images/{image_id}")
    def image(who: Visitor, image_id: int) -> Response:
        with session_scope(settings) as s:
            row = s.execute(
                select(Image.storage_key)
                .join(Job, Job.id == Image.job_id)
                .join(User, User.id == Job.owner_id)
                .where(
                    Image.id == image_id,
                    Image.hidden_at.is_(None),  # reported: hidden for everyone
                    User.platform == PLATFORM,
                    User.platform_user_id == who,
                )
            ).first()
        if row is None:
            raise HTTPException(404, "No such image.")
        data = storage_from_settings(settings).read_bytes(row[0])
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    return router


async def _stream(settings: Settings, who: str, request: Request) -> AsyncIterator[str]:
    """Send the timeline whenever it changes (cards move, images land)."""
    last = ""
    while not await request.is_disconnected():
        snapshot = json.dumps(await asyncio.to_thread(timeline, settings, who))
        if snapshot != last:
            last = snapshot
            yield f"data: {snapshot}\n\n"
        await asyncio.sleep(STREAM_INTERVAL)


def timeline(settings: Settings, who: str) -> dict[str, Any]:
    """The visitor's conversation, oldest first, and whether pictures can be drawn now."""
    with session_scope(settings) as s:
        pictures = stats.picture_status(s, settings)
    return {"items": conversation_items(settings, who), "pictures": pictures}


def conversation_items(settings: Settings, who: str) -> list[dict[str, Any]]:
    """The visitor's conversation: messages and job cards (with images), oldest first."""
    with session_scope(settings) as s:
        conv = s.scalar(
            select(Conversation).where(
                Conversation.platform == PLATFORM,
                Conversation.channel_id == who,
                Conversation.thread_id == "",
            )
        )
        if conv is None:
            return []
        messages = s.scalars(
            select(ConversationMessage)
            .where(
                ConversationMessage.conversation_id == conv.id,
                ConversationMessage.role.in_(("user", "assistant")),
            )
            .order_by(ConversationMessage.id)
        )
        items: list[dict[str, Any]] = [
            {
                "type": "message",
                "id": m.id,
                "role": m.role,
                "text": m.content,
                "at": m.created_at.isoformat(),
            }
            for m in messages
            if m.content.strip()
        ]
        for job in s.scalars(select(Job).where(Job.conversation_id == conv.id).order_by(Job.id)):
            items.append(_job_item(s, job))
    items.sort(key=lambda item: item["at"])
    return replies_first(items)


def replies_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Show the agent's answer before the job cards it started.

    The agent queues jobs while it is still writing its answer, so by time the cards
    come between the question and the answer; a chat reads better as question, answer,
    then the cards it promised."""
    out: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    answering = False
    for item in items:
        role = item.get("role") if item["type"] == "message" else None
        if role == "user":
            out += held
            held = []
            answering = True
            out.append(item)
        elif role == "assistant":
            out.append(item)
            out += held
            held = []
            answering = False
        elif answering:
            held.append(item)
        else:
            out.append(item)
    return out + held


def _job_item(session: Any, job: Job) -> dict[str, Any]:
    card = render_card(job_snapshot(session, job))
    progress = JobProgress.read(job.progress)
    percent = None
    if job.status == JobState.RUNNING and progress.total:
        percent = round(100 * (progress.step or 0) / max(1, progress.total))
    shown = [i for i in job.images if i.hidden_at is None]  # reported images are hidden
    image_ids = [i.id for i in sorted(shown, key=lambda i: i.id)] if job.status == JobState.SUCCEEDED else []
    return {
        "type": "job",
        "id": job.id,
        "status": job.status,
        "text": card.text,
        "percent": percent,
        "preview": f"data:image/jpeg;base64,{base64.b64encode(card.preview).decode()}"
        if card.preview
        else None,
        "images": [f"/api/images/{i}" for i in image_ids],
        "buttons": [b.__dict__ for b in image_buttons(job.id, image_ids)] if image_ids else [],
        "at": job.created_at.isoformat(),
    }
