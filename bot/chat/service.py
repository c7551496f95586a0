"""The conversation service: chat messages, slash commands and buttons, on any platform.

Each command is one action of `core.actions` (train, generate, vary, forget, cancel…);
this module only finds the person and conversation, and words the result as a `Reply`.

Platform adapters (Discord, Slack, the web playground) only convert: a platform event
becomes a call here with an `Origin` (who, where, which event) and downloaded `Upload`s,
and the returned `Reply` becomes a platform message. Job cards and results are posted
later by delivery from the database, never from here.

Every call records its platform event first: a redelivered event (Slack retries, a
double click) returns `Reply(duplicate=True)` and does nothing. Errors a person should
read come back as the reply's text; nothing here raises `UserFacingError` to adapters.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from agent.loop import handle_message
from bot.chat.cards import Button, forget_button_id, parse_button_id, parse_forget_id, reports_whole_message
from core.actions import forgetting, images, jobs, people, reports, subjects
from core.actions.actor import Actor
from core.actions.ownership import NotYours
from core.db import get_or_insert, session_scope
from core.dbclock import db_now
from core.errors import NotFound, UserFacingError
from core.models import Conversation, PlatformEvent
from core.photo_quality import PhotoReport
from core.settings import Settings
from core.subjects import ConsentRequired, PhotosNeedConfirmation
from core.uploads import check_uploads

INTERACTION_LIFETIME = timedelta(minutes=15)


@dataclass(frozen=True)
class Origin:
    """Who spoke, where, and which platform event it was."""

    platform: str  # discord | slack | web
    user_id: str
    display_name: str
    channel_id: str
    thread_id: str = ""
    event_id: str = ""  # the platform's id for this event; side effects key on it
    interaction_token: str | None = None  # Discord: follow-ups for 15 minutes

    @property
    def event_key(self) -> str | None:
        return f"{self.platform}:{self.event_id}" if self.event_id else None


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass
class Reply:
    text: str
    job_ids: list[int] = field(default_factory=list)
    ephemeral: bool = False  # only the speaker sees it (where the platform can)
    duplicate: bool = False  # this event was handled before: post nothing
    delete_job_id: int | None = None  # "delete" or "report" pressed: remove that job's result message
    recorded: bool = False  # the agent kept this exchange in the conversation history
    buttons: list[Button] = field(default_factory=list)  # to show under the reply (/forget's confirm)
    needs_consent: bool = False  # /train of a person without consent: ask, then call again with it
    # /train's photo coach has something to say: nothing was created; show `text` (the
    # question) with "Train anyway" / "Cancel", and call again with `confirmed=True`.
    photo_check: PhotoReport | None = None


class ConversationService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- commands -----------------------------------------------------------------------

    async def train(
        self,
        origin: Origin,
        name: str,
        class_noun: str,
        uploads: list[Upload],
        consent: bool = False,
        keep_photos: bool = False,
        confirmed: bool = False,
    ) -> Reply:
        """`/train`: check the photos, create the subject and queue its training.

        `consent`: the uploader confirmed they may use these photos (required for a person;
        without it the reply has `needs_consent` and nothing is created). `keep_photos`:
        keep the training photos after the model is trained (default: deleted). When the
        photo coach finds something (blurry, dark, copies, no face…) and not `confirmed`,
        the reply has `photo_check` and asks; nothing is created until it is confirmed."""
        return await self._guarded(
            origin, self._train, name, class_noun, uploads, consent, keep_photos, confirmed
        )

    async def check_photos(self, class_noun: str, uploads: list[Upload]) -> PhotoReport:
        """The photo coach's verdicts before anything is sent to /train (the playground's
        badges). Raises `UserFacingError` for a file that is not a usable photo."""

        def work() -> PhotoReport:
            return subjects.coach(
                self.settings, [(u.data, u.filename) for u in _checked(uploads)], class_noun
            )

        return await asyncio.to_thread(work)

    async def forget(self, origin: Origin, subject_name: str | None = None, confirm: bool = False) -> Reply:
        """`/forget [subject]`: delete one subject, or everything of this person.

        Without `confirm` the reply says what would be deleted and carries a "Forget"
        button (`db:f:<token>`, handled by `press`); with it, it is done at once. Blocked
        people may forget too; someone unknown is told there is nothing to delete."""
        return await self._as_known(origin, self._forget, subject_name, confirm)

    async def chat(self, origin: Origin, text: str, uploads: list[Upload]) -> Reply:
        """A message in a thread: the agent reads it (and its photos) and acts."""
        if not await asyncio.to_thread(self._first_time, origin):
            return Reply("", duplicate=True)
        try:
            user_id, conv_id = await asyncio.to_thread(self._who_and_where, origin)
            photos = [u.data for u in _checked(uploads)]
        except UserFacingError as exc:
            return Reply(str(exc))
        answer = await handle_message(
            self.settings,
            user_id=user_id,
            conversation_id=conv_id,
            text=text,
            photos=photos,
            event_key=origin.event_key,
        )
        return Reply(answer.text, job_ids=answer.job_ids, recorded=True)

    async def imagine(self, origin: Origin, prompt: str, n: int = 4) -> Reply:
        """`/imagine`: generate directly, no agent. Subjects are named in the prompt."""
        return await self._guarded(origin, self._imagine, prompt, n)

    async def press(self, origin: Origin, custom_id: str) -> Reply:
        """A button: variations, upscale, reroll, delete or report under a result, or the
        confirmation of /forget."""
        if (token := parse_forget_id(custom_id)) is not None:
            return await self._as_known(origin, self._confirm_forget, token)
        return await self._guarded(origin, self._press, custom_id)

    async def models(self, origin: Origin) -> Reply:
        return await self._guarded(origin, self._models, record=False)

    async def list_jobs(self, origin: Origin) -> Reply:
        return await self._guarded(origin, self._jobs, record=False)

    async def cancel(self, origin: Origin, job_id: int) -> Reply:
        return await self._guarded(origin, self._cancel, job_id)

    async def quota(self, origin: Origin) -> Reply:
        return await self._guarded(origin, self._quota, record=False)

    # -- plumbing ---------------------------------------------------------------------------

    async def _guarded(self, origin: Origin, fn: Any, *args: Any, record: bool = True) -> Reply:
        """Record the event, run `fn(ctx, *args)` in a thread, turn refusals into replies."""

        def work() -> Reply:
            if record and not self._first_time(origin):
                return Reply("", duplicate=True)
            user_id, conv_id = self._who_and_where(origin)
            return fn(Actor(self.settings, user_id, conv_id, origin.event_key), *args)

        try:
            return await asyncio.to_thread(work)
        except UserFacingError as exc:
            return Reply(str(exc), ephemeral=True)

    async def _as_known(self, origin: Origin, fn: Any, *args: Any) -> Reply:
        """Like `_guarded` for a person's own data: `fn(actor, origin, *args)` runs for a
        person already known (nothing is created) and a blocked person may act too."""
        if not await asyncio.to_thread(self._first_time, origin):
            return Reply("", duplicate=True)
        try:
            return await asyncio.to_thread(lambda: fn(self._known_actor(origin), origin, *args))
        except UserFacingError as exc:
            return Reply(str(exc), ephemeral=True)

    def _first_time(self, origin: Origin) -> bool:
        """Record the platform event; False when it was seen before."""
        if not origin.event_id:
            return True
        try:
            with session_scope(self.settings) as s:
                s.add(PlatformEvent(platform=origin.platform, event_id=origin.event_id))
        except IntegrityError:
            return False
        return True

    def _known_actor(self, origin: Origin) -> Actor:
        """The person without creating them (forgetting must not add a row)."""
        user_id = people.known_person(self.settings, origin.platform, origin.user_id)
        if user_id is None:
            raise NotFound("I have nothing stored about you, so there is nothing to forget.")
        return Actor(self.settings, user_id, None, origin.event_key)

    def _who_and_where(self, origin: Origin) -> tuple[int, int]:
        """The person (created on first contact) and the conversation record to post to."""
        with session_scope(self.settings) as s:
            user = people.person(s, origin.platform, origin.user_id, origin.display_name)
            if user.is_blocked:
                raise UserFacingError(
                    "Sorry, your account can't use dreambot. Ask an admin if this is a mistake."
                )
            where = {
                "platform": origin.platform,
                "channel_id": origin.channel_id,
                "thread_id": origin.thread_id,
            }
            conv = get_or_insert(s, Conversation, where, {"user_id": user.id})
            if origin.interaction_token:
                s.execute(
                    update(Conversation)
                    .where(Conversation.id == conv.id)
                    .values(
                        interaction_token=origin.interaction_token,
                        interaction_expires_at=db_now(INTERACTION_LIFETIME.total_seconds() - 30),
                    )
                )
            return user.id, conv.id

    # -- the commands' bodies (in a worker thread) ----------------------------------------

    def _train(
        self,
        actor: Actor,
        name: str,
        class_noun: str,
        uploads: list[Upload],
        consent: bool,
        keep_photos: bool,
        confirmed: bool,
    ) -> Reply:
        request = subjects.Train(
            name=name,
            class_noun=class_noun,
            photos=[(u.data, u.filename) for u in _checked(uploads)],
            consent=consent,
            keep_photos=keep_photos,
            confirmed=confirmed,
        )
        try:
            started = subjects.train(actor, request)
        except ConsentRequired as exc:
            return Reply(str(exc), ephemeral=True, needs_consent=True)
        except PhotosNeedConfirmation as exc:
            return Reply(str(exc), ephemeral=True, photo_check=exc.report)
        left_out = len(uploads) - started.photos if started.photos else 0
        copies = "1 was a copy" if left_out == 1 else f"{left_out} were copies"
        used = f" (training on {started.photos}: {copies})" if left_out > 0 else ""
        return Reply(
            f"Got {len(uploads)} photos of {name}{used} — training has started. I'll keep this message "
            f"updated and tell you when {name} is ready.",
            job_ids=[started.job_id],
        )

    def _forget(self, actor: Actor, origin: Origin, subject_name: str | None, confirm: bool) -> Reply:
        if confirm:
            return Reply(forgetting.forget_now(actor, subject_name, origin.platform).text, ephemeral=True)
        asked = forgetting.ask(actor, subject_name)
        button = Button("Forget", forget_button_id(asked.token), "danger")
        return Reply(asked.text, ephemeral=True, buttons=[button])

    def _confirm_forget(self, actor: Actor, origin: Origin, token: str) -> Reply:
        return Reply(forgetting.confirm(actor, token, origin.platform).text, ephemeral=True)

    def _imagine(self, actor: Actor, prompt: str, n: int) -> Reply:
        ready = [sub for sub in subjects.list_subjects(actor) if sub.status == "ready"]
        named = [sub.id for sub in ready if re.search(rf"\b{re.escape(sub.name)}\b", prompt, re.I)]
        started = images.generate(actor, images.Generate(prompt=prompt, n=n, subject_ids=named))
        return Reply(f"On it: {n} image{'s' * (n != 1)} coming up.", job_ids=[started.job_id])

    def _press(self, actor: Actor, custom_id: str) -> Reply:
        parsed = parse_button_id(custom_id)
        if parsed is None:
            return Reply(
                "That button is from an older version of dreambot; ask me again instead.", ephemeral=True
            )
        action, target = parsed
        if action == "variations":
            started = images.vary(actor, images.Vary(image_id=target))
        elif action == "upscale":
            started = images.upscale(actor, target)
        elif action == "reroll":
            with _as_person():
                started = images.reroll(actor, target)
        elif action == "report":
            answer = reports.report(actor, target, reports_whole_message)
            return Reply(answer.text, ephemeral=True, delete_job_id=answer.job_id)
        else:
            with _as_person():
                return Reply("Deleted.", ephemeral=True, delete_job_id=images.delete_result(actor, target))
        return Reply(f"On it (job #{started.job_id}).", job_ids=[started.job_id])

    def _models(self, actor: Actor) -> Reply:
        lines = [
            f"• {s.name} ({s.class_noun}) — {'ready' if s.trained else 'training'}"
            for s in subjects.list_subjects(actor)
        ]
        return _listing(
            "Your subjects:", lines, "You have no subjects yet. Start with /train and 3–10 photos."
        )

    def _jobs(self, actor: Actor) -> Reply:
        lines = [f"• #{j.id} {j.kind} — {j.status}" for j in jobs.recent(actor)]
        return _listing("Your recent jobs:", lines, "You have no recent jobs.")

    def _cancel(self, actor: Actor, job_id: int) -> Reply:
        with _as_person():
            state = jobs.cancel(actor, job_id)
        word = "cancelled" if state == "cancelled" else "stopping" if state == "running" else state
        return Reply(f"Job #{job_id}: {word}.", ephemeral=True)

    def _quota(self, actor: Actor) -> Reply:
        u = people.usage(actor)
        return Reply(
            f"Today: {u.images_today}/{u.images_per_day} images, {u.trainings_today}/{u.trainings_per_day} "
            f"trainings; {u.active_jobs}/{u.max_concurrent_jobs} jobs running or queued.",
            ephemeral=True,
        )


def _listing(title: str, lines: list[str], empty: str) -> Reply:
    return Reply(f"{title}\n" + "\n".join(lines) if lines else empty, ephemeral=True)


@contextmanager
def _as_person() -> Iterator[None]:
    """Someone else's job, said to the person (the ownership refusal speaks to the model)."""
    try:
        yield
    except NotYours:
        raise UserFacingError("That isn't one of your pictures, so I can't change it.") from None


def _checked(uploads: list[Upload]) -> list[Upload]:
    """The uploads, once their sizes and pixel counts are within `core.uploads`' limits
    (the adapters enforce the byte limits while downloading; this holds for any caller)."""
    check_uploads([(u.filename, u.data) for u in uploads])
    return uploads
