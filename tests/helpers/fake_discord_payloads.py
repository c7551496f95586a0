"""Discord API objects as the real API writes them (the fields discord.py reads)."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
ALL_PERMISSIONS = str((1 << 50) - 1)
MESSAGE_CONTENT_INTENT = 1 << 15


class Snowflakes:
    """Increasing ids with a real timestamp part (discord.py derives created_at from them)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._counter) & 0x3FFFFF)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def member(u: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": u,
        "roles": [],
        "joined_at": now_iso(),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "permissions": ALL_PERMISSIONS,
    }


def text_channel(channel_id: int, guild_id: int, name: str) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def thread(
    thread_id: int, guild_id: int, parent_id: int, owner_id: int, name: str, thread_type: int = 11
) -> dict[str, Any]:
    return {
        "id": str(thread_id),
        "type": thread_type,
        "guild_id": str(guild_id),
        "parent_id": str(parent_id),
        "owner_id": str(owner_id),
        "name": name,
        "message_count": 0,
        "member_count": 1,
        "rate_limit_per_user": 0,
        "flags": 0,
        "last_message_id": None,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": now_iso(),
            "locked": False,
        },
    }


def dm_channel(channel_id: int, recipient: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(channel_id), "type": 1, "recipients": [recipient], "last_message_id": None, "flags": 0}


def guild(
    guild_id: int, bot: dict[str, Any], channels: list[dict[str, Any]], threads: list[dict[str, Any]]
) -> dict[str, Any]:
    everyone = {
        "id": str(guild_id),
        "name": "@everyone",
        "permissions": ALL_PERMISSIONS,
        "position": 0,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }
    return {
        "id": str(guild_id),
        "name": "Fake Guild",
        "icon": None,
        "owner_id": "1",
        "roles": [everyone],
        "emojis": [],
        "stickers": [],
        "features": [],
        "member_count": 2,
        "members": [member(bot)],
        "channels": channels,
        "threads": threads,
        "presences": [],
        "voice_states": [],
        "premium_tier": 0,
        "large": False,
        "unavailable": False,
        "joined_at": now_iso(),
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "afk_timeout": 300,
        "system_channel_flags": 0,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
    }


def attachment(att_id: int, filename: str, size: int, url: str, content_type: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(att_id),
        "filename": filename,
        "size": size,
        "url": url,
        "proxy_url": url,
    }
    if content_type:
        out["content_type"] = content_type
    return out


def message(
    message_id: int, channel: dict[str, Any], author: dict[str, Any], content: str, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(message_id),
        "channel_id": channel["id"],
        "author": author,
        "content": content,
        "timestamp": now_iso(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 0,
        "flags": 0,
        "components": [],
    }
    if channel.get("guild_id"):
        out["guild_id"] = channel["guild_id"]
    out.update(extra)
    return out


def interaction(
    interaction_id: int,
    app_id: int,
    token: str,
    itype: int,
    channel: dict[str, Any],
    who: dict[str, Any],
    data: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(app_id),
        "type": itype,
        "token": token,
        "version": 1,
        "channel_id": channel["id"],
        "channel": channel,
        "data": data,
        "locale": "en-US",
        "app_permissions": ALL_PERMISSIONS,
        "entitlements": [],
        "attachment_size_limit": 10 * 1024 * 1024,
    }
    if channel.get("guild_id"):
        out.update(
            guild_id=channel["guild_id"],
            guild_locale="en-US",
            member=member(who),
            context=0,
            authorizing_integration_owners={"0": channel["guild_id"]},
        )
    else:
        out.update(user=who, context=1, authorizing_integration_owners={"1": who["id"]})
    out.update(extra)
    return out
