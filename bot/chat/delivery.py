"""Delivery: posts job cards and results from the database to chat, exactly once.

The outbox (`outbox` rows) is the memory: each thing to post is a row
`pending -> posting -> posted` with the platform's message id. Before posting, a row is
marked `posting` (committed); after a restart, `posting` rows are first looked up on the
platform by their nonce (Discord `nonce` + `enforce_nonce`, Slack message metadata) and
only posted again when not found. So a bot killed mid-delivery neither loses nor repeats.

Rows are derived from jobs: every job with a conversation gets a card row
(`job:{id}:card`, edited in place at most once per `CARD_EDIT_INTERVAL`) and, once it
succeeds with images, an images row (`job:{id}:images`): a sample job's pictures, or a
training's test pictures made with the new model. Platform errors are retried
with backoff or recorded on the row; they never stop the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.chat.cards import Button, Card, JobSnapshot, image_buttons, parse_button_id, render_card
from core.db import session_scope
from core.dbclock import db_now
from core.enums import JobKind, JobState
from core.job_progress import JobProgress
from core.job_results import SampleResult, read_result
from core.logs import bind_job
from core.models import Conversation, Image, Job, OutboxItem, Subject
from core.settings import Settings
from core.storage import storage_from_settings

log = logging.getLogger(__name__)

CARD_EDIT_INTERVAL = 1.0  # seconds between edits of one card (platform rate limits)
TRAINING_IMAGES_TEXT = "First test pictures with the new model:"
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Target:
    """Where to post: a conversation's platform coordinates."""

    conversation_id: int
    platform: str
    channel_id: str
    thread_id: str
    interaction_token: str | None
    interaction_valid: bool  # Discord: the token may still be used (15 minutes)


@dataclass
class OutMessage:
    text: str
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (filename, data)
    buttons: list[Button] = field(default_factory=list)
    preview: bytes | None = None  # a small JPEG shown with a card


class DeliveryError(Exception):
    """A platform refused; `retry` says whether trying again later may work."""

    def __init__(self, message: str, *, retry: bool = True, after: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry
        self.after = after


class Poster(Protocol):
    """What a platform adapter provides to delivery."""

    async def post(self, target: Target, message: OutMessage, nonce: str) -> str:
        """Post `message`; returns the platform message id."""

    async def edit(self, target: Target, message_id: str, message: OutMessage) -> None: ...

    async def find(self, target: Target, nonce: str, message: OutMessage) -> str | None:
        """The id of a message already posted with `nonce`, if any (restart recovery). A
        platform that posts `message` in several calls may finish a half-done post here."""


def job_snapshot(session: Session, job: Job) -> JobSnapshot:
    """What a card needs to know about `job`: its row, queue position and subjects."""
    position = 0
    if job.status == JobState.QUEUED:
        ahead = select(func.count()).where(
            Job.queue == job.queue, Job.status == JobState.QUEUED, Job.id < job.id
        )
        position = 1 + (session.scalar(ahead) or 0)
    subjects = tuple((sub.token, sub.class_noun, sub.name) for sub in job.subjects)
    first = session.get(Subject, job.subject_id) if job.subject_id else None
    return JobSnapshot(
        job.id,
        job.kind,
        job.status,
        JobProgress.read(job.progress),
        dict(job.params or {}),
        read_result(job.kind, job.result),
        job.error,
        position,
        first.name if first else None,
        subjects,
    )


def card_key(job_id: int) -> str:
    return f"job:{job_id}:card"


def images_key(job_id: int) -> str:
    return f"job:{job_id}:images"


class Delivery:
    """One pass at a time over the outbox; `run` loops until stopped."""

    def __init__(self, settings: Settings, posters: dict[str, Poster]) -> None:
        self.settings = settings
        self.posters = posters
        self._edited: dict[int, float] = {}  # outbox id -> monotonic time of last edit
        self._retry_at: dict[int, float] = {}

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        while not stop.is_set():
            try:
                await self.pass_once()
            except Exception:
                log.exception("delivery pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def pass_once(self) -> None:
        await asyncio.to_thread(self._derive_rows)
        for row_id in await asyncio.to_thread(self._due_rows):
            await self._deliver(row_id)

    # -- deriving rows from jobs ----------------------------------------------------------

    def _derive_rows(self) -> None:
        platforms = list(self.posters)
        with session_scope(self.settings) as s:
            has_card = select(OutboxItem.id).where(OutboxItem.job_id == Job.id, OutboxItem.kind == "job_card")
            need_card = s.execute(
                select(Job.id, Job.conversation_id)
                .join(Conversation, Conversation.id == Job.conversation_id)
                .where(Conversation.platform.in_(platforms), ~has_card.exists())
            ).all()
            has_images = select(OutboxItem.id).where(OutboxItem.job_id == Job.id, OutboxItem.kind == "images")
            made_images = select(Image.id).where(Image.job_id == Job.id)
            need_images = s.execute(
                select(Job.id, Job.conversation_id)
                .join(Conversation, Conversation.id == Job.conversation_id)
                .where(
                    Conversation.platform.in_(platforms),
                    Job.status == JobState.SUCCEEDED,
                    (Job.kind == JobKind.SAMPLE) | ((Job.kind == JobKind.TRAIN) & made_images.exists()),
                    ~has_images.exists(),
                )
            ).all()
        for kind, rows, key in (("job_card", need_card, card_key), ("images", need_images, images_key)):
            for job_id, conv_id in rows:
                self._insert(
                    OutboxItem(
                        conversation_id=conv_id,
                        job_id=job_id,
                        kind=kind,
                        idempotency_key=key(job_id),
                        payload={},
                    )
                )

    def _insert(self, row: OutboxItem) -> None:
        try:
            with session_scope(self.settings) as s:
                s.add(row)
        except IntegrityError:
            pass  # another bot process derived it first

    def _due_rows(self) -> list[int]:
        """Rows to post, and cards whose job is still changing (or changed since last shown)."""
        now = time.monotonic()
        with session_scope(self.settings) as s:
            rows = (
                s.execute(
                    select(OutboxItem.id, OutboxItem.kind, OutboxItem.state, OutboxItem.payload)
                    .where(
                        OutboxItem.attempts < MAX_ATTEMPTS,
                        OutboxItem.state.in_(("pending", "posting"))
                        | and_(OutboxItem.kind == "job_card", OutboxItem.state == "posted"),
                    )
                    .order_by(OutboxItem.id)
                )
                .tuples()
                .all()
            )
        due = []
        for row_id, kind, state, payload in rows:
            if self._retry_at.get(row_id, 0) > now:
                continue
            if kind == "job_card" and state == "posted" and (payload or {}).get("final"):
                continue  # a finished card never changes again
            if (
                kind == "job_card"
                and state == "posted"
                and now - self._edited.get(row_id, 0) < CARD_EDIT_INTERVAL
            ):
                continue
            due.append(row_id)
        return due

    # -- posting ---------------------------------------------------------------------------

    async def _deliver(self, row_id: int) -> None:
        item, target = await asyncio.to_thread(self._load, row_id)
        if item is None or target is None:
            return
        poster = self.posters.get(target.platform)
        if poster is None:
            return
        with bind_job(item.job_id):  # delivery's lines carry the job id, like the worker's
            await self._deliver_item(poster, item, target)

    async def _deliver_item(self, poster: Poster, item: OutboxItem, target: Target) -> None:
        try:
            if item.kind == "job_card":
                await self._deliver_card(poster, item, target)
            elif item.kind == "images":
                await self._deliver_once(
                    poster, item, target, await asyncio.to_thread(self._images_message, item)
                )
        except DeliveryError as exc:
            await asyncio.to_thread(self._failed, item.id, str(exc), exc.retry)
            self._retry_at[item.id] = time.monotonic() + (exc.after or min(60.0, 2 ** (item.attempts + 1)))
            log.warning("delivery of outbox %s failed (%s)", item.id, exc)

    async def _deliver_card(self, poster: Poster, item: OutboxItem, target: Target) -> None:
        card = await asyncio.to_thread(self._card, item.job_id or 0)
        message = OutMessage(card.text, buttons=card.buttons, preview=card.preview)
        shown = {"text": card.text, "preview": card.preview is not None, "final": card.done}
        if item.state == "posted" and item.platform_message_id:
            if {k: item.payload.get(k) for k in shown} == shown:
                return  # nothing new to show
            await poster.edit(target, item.platform_message_id, message)
        else:
            await self._deliver_once(poster, item, target, message)
        await asyncio.to_thread(self._set_payload, item.id, shown)
        if card.done:
            self._edited.pop(item.id, None)  # a final card is never edited again: forget it
        else:
            self._edited[item.id] = time.monotonic()

    async def _deliver_once(
        self, poster: Poster, item: OutboxItem, target: Target, message: OutMessage
    ) -> None:
        nonce = f"db{item.id}"
        if item.state == "posting":  # we may have posted before a crash: look first
            found = await poster.find(target, nonce, message)
            if found is not None:
                await asyncio.to_thread(self._posted, item.id, found)
                return
        await asyncio.to_thread(self._mark_posting, item.id)
        message_id = await poster.post(target, message, nonce)
        await asyncio.to_thread(self._posted, item.id, message_id)
        log.info("outbox %s: %s posted to %s as %s", item.id, item.kind, target.platform, message_id)

    # -- database helpers (run in a thread) --------------------------------------------------

    def _load(self, row_id: int) -> tuple[OutboxItem | None, Target | None]:
        with session_scope(self.settings) as s:
            item = s.get(OutboxItem, row_id)
            if item is None:
                return None, None
            conv = s.get(Conversation, item.conversation_id)
            if conv is None:
                return item, None
            valid = bool(conv.interaction_token) and s.scalar(
                select(func.count()).where(
                    Conversation.id == conv.id, Conversation.interaction_expires_at > db_now()
                )
            )
            target = Target(
                conv.id, conv.platform, conv.channel_id, conv.thread_id, conv.interaction_token, bool(valid)
            )
            return item, target

    def _card(self, job_id: int) -> Card:
        with session_scope(self.settings) as s:
            job = s.get(Job, job_id)
            assert job is not None
            return render_card(job_snapshot(s, job))

    def _images_message(self, item: OutboxItem) -> OutMessage:
        storage = storage_from_settings(self.settings)
        with session_scope(self.settings) as s:
            job = s.get(Job, item.job_id)
            images = list(
                s.scalars(
                    select(Image)
                    .where(Image.job_id == item.job_id, Image.hidden_at.is_(None))  # reported: not posted
                    .order_by(Image.id)
                )
            )
            files = [
                (f"dreambot-{job.id if job else 0}-{n + 1}.png", storage.read_bytes(img.storage_key))
                for n, img in enumerate(images)
            ]
            ids = [img.id for img in images]
            result = read_result(job.kind, job.result) if job else None
            notice = result.notice if isinstance(result, SampleResult) else None
            training = job is not None and job.kind == JobKind.TRAIN
        buttons = image_buttons(item.job_id or 0, ids)
        if training:  # test pictures: vary or upscale them, but a reroll would retrain
            text = TRAINING_IMAGES_TEXT
            buttons = [b for b in buttons if (parse_button_id(b.custom_id) or ("",))[0] != "reroll"]
        else:
            text = notice or ""
        return OutMessage(text, files=files, buttons=buttons)

    def _mark_posting(self, row_id: int) -> None:
        with session_scope(self.settings) as s:
            s.execute(
                update(OutboxItem)
                .where(OutboxItem.id == row_id)
                .values(state="posting", attempts=OutboxItem.attempts + 1)
            )

    def _posted(self, row_id: int, message_id: str) -> None:
        with session_scope(self.settings) as s:
            s.execute(
                update(OutboxItem)
                .where(OutboxItem.id == row_id)
                .values(state="posted", platform_message_id=message_id, posted_at=db_now(), error=None)
            )
        self._retry_at.pop(row_id, None)

    def _set_payload(self, row_id: int, payload: dict[str, object]) -> None:
        with session_scope(self.settings) as s:
            s.execute(update(OutboxItem).where(OutboxItem.id == row_id).values(payload=payload))

    def _failed(self, row_id: int, error: str, retry: bool) -> None:
        with session_scope(self.settings) as s:
            values: dict[str, object] = {"error": error[:500], "attempts": OutboxItem.attempts + 1}
            if not retry:
                values["state"] = "failed"
            s.execute(update(OutboxItem).where(OutboxItem.id == row_id).values(**values))
