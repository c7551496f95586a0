"""Slack's side of the photo coach's question: /train photos waiting for "Train anyway".

A modal's photos are downloaded before the service sees them; when the photo coach asks
first, they wait here, in memory, for `LIFETIME` (like an open modal: a restart forgets
them and the person runs /train again). Buttons carry `photos:train:<key>` and
`photos:cancel:<key>`; each question is answered once, and only by its uploader.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from bot.chat.cards import Button
from bot.chat.service import Origin, Upload
from bot.platforms.slack.convert import TrainForm

LIFETIME = 15 * 60.0  # seconds the photos wait for an answer
CANCELLED = "Cancelled: nothing was trained. Run /train again with other photos whenever you like."
EXPIRED = "That question has expired; please run /train again."
PREFIX = "photos:"


@dataclass(frozen=True)
class Asked:
    deadline: float
    origin: Origin
    form: TrainForm
    uploads: list[Upload]


@dataclass
class AskedTrainings:
    waiting: dict[str, Asked] = field(default_factory=dict)

    def ask(self, origin: Origin, form: TrainForm, uploads: list[Upload]) -> list[Button]:
        """Keep the photos; the buttons to show under the question."""
        now = time.monotonic()
        for stale in [k for k, asked in self.waiting.items() if asked.deadline < now]:
            del self.waiting[stale]
        key = uuid.uuid4().hex
        self.waiting[key] = Asked(now + LIFETIME, origin, form, uploads)
        return [
            Button("Train anyway", f"{PREFIX}train:{key}", "primary"),
            Button("Cancel", f"{PREFIX}cancel:{key}"),
        ]

    def answer(self, action_id: str, user_id: str) -> tuple[str, Asked | None]:
        """("train" | "cancel", the waiting photos) for the uploader's first press; None
        when the question expired or was answered; ("", None) for someone else's press."""
        _, answer, key = action_id.split(":", 2)
        asked = self.waiting.get(key)
        if asked is None or asked.deadline < time.monotonic():
            return answer, None
        if asked.origin.user_id != user_id:
            return "", None
        del self.waiting[key]
        return answer, asked
