"""Pure conversions between Discord's objects and the service's (no network here).

Inbound: an interaction or message becomes an `Origin` (who, which conversation, which
event). Outbound: an `OutMessage` becomes message parameters (text, files that fit the
upload limit, buttons).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import discord
from PIL import Image

from bot.chat.cards import Button
from bot.chat.service import Origin
from core.image_codec import fit_under

MAX_FILES_PER_MESSAGE = 10  # Discord's limit on attachments per message
MAX_CONTENT = 2000  # characters per message
THREAD_TYPES = {
    discord.ChannelType.public_thread,
    discord.ChannelType.private_thread,
    discord.ChannelType.news_thread,
}
STYLES = {
    "primary": discord.ButtonStyle.primary,
    "secondary": discord.ButtonStyle.secondary,
    "danger": discord.ButtonStyle.danger,
}


def place_of(channel: object, channel_id: int | None) -> tuple[str, str]:
    """(channel_id, thread_id) of a conversation: a thread is kept under its parent."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    if getattr(channel, "type", None) in THREAD_TYPES and getattr(channel, "parent_id", None):
        return str(channel.parent_id), str(channel.id)  # type: ignore[attr-defined]
    return str(getattr(channel, "id", None) or channel_id or ""), ""


def where_to_post(channel_id: str, thread_id: str) -> int:
    """The Discord channel a conversation's messages go to."""
    return int(thread_id or channel_id)


def interaction_origin(
    interaction: discord.Interaction, *, thread_id: str | None = None, with_token: bool = True
) -> Origin:
    """`thread_id` overrides where the conversation lives (a thread just made for it).

    The token is only kept when follow-ups through it land in that conversation: an
    interaction's follow-ups always go to the channel it was used in.
    """
    channel_id, here = place_of(interaction.channel, interaction.channel_id)
    user = interaction.user
    return Origin(
        platform="discord",
        user_id=str(user.id),
        display_name=user.display_name,
        channel_id=channel_id,
        thread_id=here if thread_id is None else thread_id,
        event_id=str(interaction.id),
        interaction_token=interaction.token if with_token and thread_id in (None, here) else None,
    )


def message_origin(message: discord.Message, thread_id: str | None = None) -> Origin:
    channel_id, here = place_of(message.channel, message.channel.id)
    return Origin(
        platform="discord",
        user_id=str(message.author.id),
        display_name=message.author.display_name,
        channel_id=channel_id,
        thread_id=here if thread_id is None else thread_id,
        event_id=str(message.id),
    )


def without_mention(text: str, bot_id: int) -> str:
    for form in (f"<@{bot_id}>", f"<@!{bot_id}>"):
        text = text.replace(form, "")
    return " ".join(text.split())


def clip(text: str) -> str:
    return text if len(text) <= MAX_CONTENT else text[: MAX_CONTENT - 1] + "…"


def thread_name(text: str) -> str:
    name = " ".join(text.split()) or "dreambot"
    return name if len(name) <= 90 else name[:89] + "…"


def view_of(buttons: list[Button]) -> discord.ui.View | None:
    """Buttons as components. The view is stopped at once: presses arrive as plain
    interactions (handled by custom_id, which survives restarts), not via view callbacks."""
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for b in buttons[:25]:
        view.add_item(discord.ui.Button(label=b.label, custom_id=b.custom_id, style=STYLES[b.style]))
    view.stop()
    return view


@dataclass(frozen=True)
class OutFile:
    filename: str
    data: bytes

    def to_discord(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename)


def fit_files(files: list[tuple[str, bytes]], limit: int) -> list[list[OutFile]]:
    """Files grouped ≤ 10 per message, each group within `limit` bytes in all; images that
    do not fit their share are re-encoded (WebP/JPEG, then smaller)."""
    groups: list[list[OutFile]] = []
    for start in range(0, len(files), MAX_FILES_PER_MESSAGE):
        chunk = files[start : start + MAX_FILES_PER_MESSAGE]
        if sum(len(data) for _, data in chunk) <= limit:
            groups.append([OutFile(name, data) for name, data in chunk])
            continue
        share = limit // len(chunk)
        group = []
        for name, data in chunk:
            if len(data) <= share:
                group.append(OutFile(name, data))
                continue
            encoded = fit_under(data, share)
            stem = name.rsplit(".", 1)[0]
            group.append(
                OutFile(f"{stem}.{'jpg' if encoded.format == 'jpeg' else encoded.format}", encoded.data)
            )
        groups.append(group)
    return groups


def preview_file(preview: bytes | None) -> OutFile | None:
    if not preview:
        return None
    try:
        with Image.open(io.BytesIO(preview)) as im:
            fmt = (im.format or "jpeg").lower()
    except OSError:
        return None
    return OutFile(f"preview.{'jpg' if fmt == 'jpeg' else fmt}", preview)
