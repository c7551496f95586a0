"""The agent loop: one person's message in, a reply and the jobs it started out.

Without a configured LLM, or when the first model call of a message fails (down, key
refused, timed out, budget spent), the built-in basic mode answers instead
(`agent/basic_mode.py`). Every answer — a failure's polite sentence too — is stored in the
conversation like any reply, so every surface shows it.

Per message: at most 8 model calls; a malformed call (unreadable, unknown tool, invalid
arguments) is fed back at most twice before we apologise; an identical repeated call is
answered from the first result instead of running again; each side effect carries the
idempotency key `platform:event_id:n`, so a redelivered event finds its jobs instead of
starting new ones. The LLM budget is checked before every call and usage recorded after.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from agent import basic_mode
from agent.chat_mode import llm_configured
from agent.llm import Completion, LLMClient, LLMError, OnDelta
from agent.memory import estimate_tokens, load_turns, save_message, save_photos
from agent.photo_policy import PLACEHOLDER, may_send_photos
from agent.prompt import Turn, shape_messages, system_prompt, tool_output
from agent.toolcalls import ToolCall, parse_reply
from agent.tools import ToolContext, openai_tools, run_tool, tool_specs
from core.db import session_scope
from core.errors import LLMBudgetExceeded
from core.models import LLMUsage, Subject
from core.quotas import check_llm_budget
from core.settings import Settings
from core.storage import storage_from_settings

log = logging.getLogger(__name__)

MAX_MODEL_CALLS = 8
MAX_INVALID_FEEDBACK = 2
MAX_REPEATS = 2

CONFUSED = "Sorry, I got muddled trying to do that. Could you say it another way?"
GAVE_UP = "Sorry, that took me too many steps. Could you ask again, perhaps in smaller pieces?"
STARTED = "I've started job(s) {jobs}; I'll post the results here when they're ready."


@dataclass
class AgentReply:
    text: str
    job_ids: list[int] = field(default_factory=list)
    error: str | None = None  # for the operator's log, never shown to the person
    model_calls: int = 0


async def handle_message(
    settings: Settings,
    *,
    user_id: int,
    conversation_id: int,
    text: str,
    photos: list[bytes],
    event_key: str | None,
    on_delta: OnDelta | None = None,
    llm: LLMClient | None = None,
) -> AgentReply:
    """Answer one message of `user_id` in `conversation_id` (both rows must exist).

    `event_key` ("platform:event_id") makes side effects idempotent across redeliveries.
    `on_delta(text_so_far)` lets a chat message grow while a plain reply is written.
    """
    if llm is None and not llm_configured(settings):
        turn = _Turn(settings, None, user_id, conversation_id, event_key, on_delta)
        await turn.save_user(text, photos)
        return await turn.basic(text, len(photos), None)
    client = llm or LLMClient(settings)
    try:
        return await _Turn(settings, client, user_id, conversation_id, event_key, on_delta).run(text, photos)
    finally:
        if llm is None:
            await client.close()


class _Turn:
    def __init__(
        self,
        settings: Settings,
        llm: LLMClient | None,
        user_id: int,
        conversation_id: int,
        event_key: str | None,
        on_delta: OnDelta | None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.ctx = ToolContext(settings, user_id, conversation_id, event_key)
        self.gate = StreamGate(on_delta) if on_delta else None
        self.calls = 0

    def reply(self, text: str, error: str | None = None) -> AgentReply:
        return AgentReply(text, list(dict.fromkeys(self.ctx.job_ids)), error, self.calls)

    async def final(self, text: str, error: str | None = None) -> AgentReply:
        """The answer, stored in the conversation like any reply (every surface shows it)."""
        await asyncio.to_thread(self._save, "assistant", text, None, None)
        return self.reply(text, error)

    async def basic(
        self, text: str, n_photos: int, problem: str | None, error: str | None = None
    ) -> AgentReply:
        """Basic mode's answer; `problem` is the polite sentence about an LLM that failed."""
        answer = await asyncio.to_thread(basic_mode.respond, self.ctx, text, n_photos, llm_problem=problem)
        return await self.final(answer, error)

    async def save_user(self, text: str, photos: list[bytes]) -> None:
        msg_id = await asyncio.to_thread(
            save_message,
            self.settings,
            conversation_id=self.conversation_id,
            user_id=self.user_id,
            role="user",
            content=text,
        )
        if photos:
            storage = storage_from_settings(self.settings)
            await asyncio.to_thread(save_photos, storage, self.conversation_id, msg_id, list(photos))

    async def run(self, text: str, photos: list[bytes]) -> AgentReply:
        native = self.settings.llm_native_tools
        system = system_prompt(
            tool_specs(), await asyncio.to_thread(self._context, len(photos)), native=native
        )
        # Photos the endpoint may not see travel as a placeholder (agent/photo_policy.py).
        shown = list(photos) if may_send_photos(self.settings) else []
        user_text = text if shown or not photos else f"{text}\n\n{PLACEHOLDER.format(n=len(photos))}".strip()
        current = Turn("user", user_text, images=shown)
        history = await asyncio.to_thread(self._history, system, current)
        await self.save_user(text, photos)
        turns = [*history, current]
        results: dict[str, dict[str, Any]] = {}
        invalid = repeats = 0
        tools = openai_tools() if native else None

        assert self.llm is not None
        while self.calls < MAX_MODEL_CALLS:
            try:
                await asyncio.to_thread(self._check_budget)
            except LLMBudgetExceeded as exc:
                if not self.calls:
                    return await self.basic(text, len(photos), str(exc))
                return await self.final(f"{exc} {self._fallback()}" if self.ctx.job_ids else str(exc))
            self.calls += 1
            if self.gate:
                self.gate.shown = ""
            try:
                done = await self.llm.complete(shape_messages(system, turns), tools=tools, on_delta=self.gate)
            except LLMError as exc:
                log.error("agent: %s", exc.operator_message)
                await asyncio.to_thread(
                    self._record, None, f"{exc.status or ''} {type(exc).__name__}".strip()
                )
                if self.calls == 1:  # nothing done yet: basic mode may still help
                    return await self.basic(text, len(photos), exc.user_message, exc.operator_message)
                started = f" {self._fallback()}" if self.ctx.job_ids else ""
                return await self.final(exc.user_message + started, exc.operator_message)
            await asyncio.to_thread(self._record, done, None)

            parsed = parse_reply(done.text)
            calls = done.native_calls or parsed.calls
            errors = done.native_errors + ([] if done.native_calls else parsed.errors)
            if not calls and not errors:
                answer = done.text.strip() or self._fallback()
                await asyncio.to_thread(self._save, "assistant", answer, None, done)
                return self.reply(answer)

            outputs: list[dict[str, Any]] = [
                {
                    "error": f"Your tool call could not be read: {e}. Write it again as one ```tool_code "
                    'block holding {"name": ..., "arguments": {...}}.'
                }
                for e in errors
            ]
            bad = bool(errors)
            for call in calls:
                key = call.key()
                if key in results:
                    repeats += 1
                    outputs.append(
                        {
                            **results[key],
                            "note": "Already done for this message; "
                            "do not call it again. Answer the person now.",
                        }
                    )
                    continue
                result = await asyncio.to_thread(run_tool, self.ctx, call)
                bad = bad or result.invalid
                if not result.invalid:
                    results[key] = result.output
                outputs.append(result.output)
            invalid += bad

            said = done.text if errors else parsed.prose
            await asyncio.to_thread(self._save, "assistant", said, calls, done)
            await asyncio.to_thread(self._save, "tool", tool_output(outputs), None, None)
            turns += [Turn("assistant", said, calls=calls), Turn("tool", tool_output(outputs))]
            if invalid > MAX_INVALID_FEEDBACK:
                log.warning("agent: %d malformed tool calls for one message; giving up", invalid)
                return await self.final(CONFUSED if not self.ctx.job_ids else self._fallback())
            if repeats >= MAX_REPEATS:
                return await self.final(self._fallback())
        return await self.final(self._fallback() if self.ctx.job_ids else GAVE_UP)

    def _fallback(self) -> str:
        if self.ctx.job_ids:
            return STARTED.format(jobs=", ".join(f"#{j}" for j in dict.fromkeys(self.ctx.job_ids)))
        return CONFUSED

    # -- database work (run in a thread: the bot's event loop must not block) ----------

    def _context(self, n_photos: int) -> str:
        with session_scope(self.settings) as session:
            subjects = list(
                session.scalars(select(Subject).where(Subject.owner_id == self.user_id).order_by(Subject.id))
            )
            lines = [
                f"- #{s.id} “{s.name}”: {s.class_noun}" + ("" if s.artifact_key else " (still training)")
                for s in subjects
            ]
        own = "This person's subjects:\n" + "\n".join(lines) if lines else "This person has no subjects yet."
        if n_photos:
            own += f"\nThe person attached {n_photos} photo(s) to this message."
        return own

    def _history(self, system: str, current: Turn) -> list[Turn]:
        reserve = estimate_tokens(Turn("user", system)) + estimate_tokens(current)
        return load_turns(self.settings, self.conversation_id, reserve=reserve)

    def _check_budget(self) -> None:
        with session_scope(self.settings) as session:
            check_llm_budget(session, self.settings)

    def _record(self, done: Completion | None, error: str | None) -> None:
        with session_scope(self.settings) as session:
            session.add(
                LLMUsage(
                    conversation_id=self.conversation_id,
                    user_id=self.user_id,
                    model=(done.model if done else "") or self.settings.llm_model,
                    prompt_tokens=done.prompt_tokens if done else 0,
                    completion_tokens=done.completion_tokens if done else 0,
                    cost_usd=done.cost_usd if done else 0.0,
                    error=error[:200] if error else None,
                )
            )

    def _save(self, role: str, content: str, calls: list[ToolCall] | None, done: Completion | None) -> None:
        save_message(
            self.settings,
            conversation_id=self.conversation_id,
            user_id=self.user_id,
            role=role,
            content=content,
            calls=calls,
            prompt_tokens=done.prompt_tokens if done else 0,
            completion_tokens=done.completion_tokens if done else 0,
        )


# -- streaming ----------------------------------------------------------------------------------

_CALL_STARTS = ("`", "{", "[", "tool_code")
_CALL_MARKERS = ("```", "\n{", "\n[", '{"name"', "[{", "tool_code")


def visible_text(text: str) -> str:
    """The part of a reply still being written that is safe to show: never a tool call.

    A reply that opens like a call shows nothing; prose before a call shows up to the call;
    a trailing fragment that might become a marker ("`", "``") is held back.
    """
    head = text.lstrip()
    if not head or head.startswith(_CALL_STARTS) or any(m.startswith(head) for m in _CALL_STARTS):
        return ""
    cut = min((i for i in (text.find(m) for m in _CALL_MARKERS) if i >= 0), default=len(text))
    shown = text[:cut]
    for marker in _CALL_MARKERS:
        for n in range(len(marker) - 1, 0, -1):
            if shown.endswith(marker[:n]):
                shown = shown[:-n]
                break
    return shown.rstrip()


class StreamGate:
    """Passes a growing reply to the chat's callback, holding back anything call-like."""

    def __init__(self, sink: OnDelta) -> None:
        self.sink = sink
        self.shown = ""

    async def __call__(self, text_so_far: str) -> None:
        visible = visible_text(text_so_far)
        if not visible or visible == self.shown:
            return
        self.shown = visible
        result = self.sink(visible)
        if asyncio.iscoroutine(result):
            await result
