"""Who acts: the person, where they speak, and what their platform event already started.

Every surface builds one `Actor` per platform event (a chat message, a slash command, a
button, a CLI run) and passes it to the actions, so a redelivered event starts nothing
twice: each side effect is keyed `platform:event_id:n`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import Settings


@dataclass
class Actor:
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
