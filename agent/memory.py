"""Per-thread memory: messages in `conversation_messages`, photos in storage.

A thread's history is trimmed to a token budget (default 32k of Gemma's 128k) by dropping
whole exchanges — a person's message and every call, result and reply that followed it —
oldest first, so a tool call is never separated from its result. The first exchange (how
the thread started) and the newest one are always kept. Photos a person sent are stored
under `conversations/<id>/messages/<message id>/`, where `train_subject` finds them later;
in older turns the model sees a placeholder instead of pixels.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from PIL import Image
from sqlalchemy import select

from agent.prompt import Turn
from agent.toolcalls import ToolCall
from core.db import session_scope
from core.models import ConversationMessage
from core.settings import Settings
from core.storage import Storage, storage_from_settings

TOKENS_PER_IMAGE = 260  # Gemma 3 encodes an image as 256 soft tokens
CHARS_PER_TOKEN = 3.5


def attachments_prefix(conversation_id: int, message_id: int | None = None) -> str:
    base = f"conversations/{conversation_id}/messages/"
    return base if message_id is None else f"{base}{message_id}/"


def save_message(
    settings: Settings,
    *,
    conversation_id: int,
    user_id: int | None,
    role: str,
    content: str,
    calls: list[ToolCall] | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> int:
    with session_scope(settings) as session:
        row = ConversationMessage(
            conversation_id=conversation_id,
            user_id=user_id,
            role=role,
            content=content,
            tool_calls=[{"name": c.name, "arguments": c.arguments} for c in calls] if calls else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        session.add(row)
        session.flush()
        return row.id


def save_photos(storage: Storage, conversation_id: int, message_id: int, photos: list[bytes]) -> list[str]:
    """Store the photos of one message as sent; unreadable files are skipped."""
    keys = []
    for i, data in enumerate(photos):
        ext = _image_ext(data)
        if ext is None:
            continue
        key = f"{attachments_prefix(conversation_id, message_id)}{i:02d}.{ext}"
        storage.put(key, data)
        keys.append(key)
    return keys


def _image_ext(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "").lower()
    except Exception:  # PIL raises many types for a broken or foreign file
        return None
    return {"jpeg": "jpg"}.get(fmt, fmt) or None


def photos_by_message(storage: Storage, conversation_id: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = defaultdict(list)
    prefix = attachments_prefix(conversation_id)
    for key in storage.list(prefix):
        head = key[len(prefix) :].split("/", 1)[0]
        if head.isdigit():
            found[int(head)].append(key)
    return dict(found)


def latest_photos(settings: Settings, conversation_id: int, user_id: int) -> list[str]:
    """Storage keys of the newest photos this person sent in this thread (one message's worth)."""
    storage = storage_from_settings(settings)
    by_message = photos_by_message(storage, conversation_id)
    if not by_message:
        return []
    with session_scope(settings) as session:
        own = set(
            session.scalars(
                select(ConversationMessage.id).where(
                    ConversationMessage.id.in_(list(by_message)),
                    ConversationMessage.user_id == user_id,
                    ConversationMessage.role == "user",
                )
            )
        )
    mine = sorted(mid for mid in by_message if mid in own)
    return sorted(by_message[mine[-1]]) if mine else []


def load_turns(
    settings: Settings, conversation_id: int, *, budget_tokens: int | None = None, reserve: int = 0
) -> list[Turn]:
    """The thread as the model should see it, oldest first, trimmed to the budget.

    `reserve` is what the caller adds on top (system prompt, the new message)."""
    storage = storage_from_settings(settings)
    photos = photos_by_message(storage, conversation_id)
    with session_scope(settings) as session:
        rows = list(
            session.scalars(
                select(ConversationMessage)
                .where(ConversationMessage.conversation_id == conversation_id)
                .order_by(ConversationMessage.id)
            )
        )
        turns = [_turn(row, len(photos.get(row.id, []))) for row in rows]
    return trim(turns, budget_tokens or settings.llm_context_tokens, reserve)


def _turn(row: ConversationMessage, n_photos: int) -> Turn:
    calls = [_call(c) for c in row.tool_calls or [] if isinstance(c, dict)]
    return Turn(role=row.role, text=row.content or "", hidden_photos=n_photos, calls=[c for c in calls if c])


def _call(data: dict[str, Any]) -> ToolCall | None:
    name, args = data.get("name"), data.get("arguments")
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    return ToolCall(name, args)


def estimate_tokens(turn: Turn) -> int:
    text = len(turn.text) + sum(len(str(c.arguments)) + len(c.name) for c in turn.calls)
    return (
        int(text / CHARS_PER_TOKEN) + 4 + TOKENS_PER_IMAGE * len(turn.images) + 12 * bool(turn.hidden_photos)
    )


def exchanges(turns: list[Turn]) -> list[list[Turn]]:
    """Split at each person's message; calls and their results stay in one exchange."""
    groups: list[list[Turn]] = []
    for turn in turns:
        if turn.role == "user" or not groups:
            groups.append([turn])
        else:
            groups[-1].append(turn)
    return groups


def trim(turns: list[Turn], budget_tokens: int, reserve: int = 0) -> list[Turn]:
    """Drop the oldest exchanges (never the first or the newest) until the rest fits."""
    groups = exchanges(turns)
    cost = [sum(estimate_tokens(t) for t in g) for g in groups]
    total = sum(cost) + reserve
    keep = [True] * len(groups)
    for i in range(1, len(groups) - 1):
        if total <= budget_tokens:
            break
        keep[i] = False
        total -= cost[i]
    return [t for g, k in zip(groups, keep, strict=True) if k for t in g]
