"""Delivery's Poster for Discord: job cards and result images, posted and edited.

While a conversation's interaction token is valid (15 minutes), messages go out as
interaction follow-ups (they need no channel permission); afterwards, and whenever the
token is refused, as ordinary channel messages. Channel messages carry delivery's nonce
(discord.py's `send(nonce=...)` always sends it with `enforce_nonce`), so Discord itself
returns the first message if the same nonce is posted again within a few minutes; `find`
also looks for the nonce among recent messages.
Webhook follow-ups cannot carry a nonce: `find` recognises an images follow-up by its
files (their names are the job's), so only a card follow-up can be repeated by a crash
between its post and the commit.

Only discord.py's public API is used here (channels, messages, webhooks); where its
requests go is set once for the process by `transport.py`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import PurePath
from typing import Any

import aiohttp
import discord

from bot.chat.delivery import DeliveryError, OutMessage, Target
from bot.platforms.discord.convert import (
    OutFile,
    clip,
    fit_files,
    preview_file,
    view_of,
    where_to_post,
)

log = logging.getLogger(__name__)

RECENT = 50  # how many recent channel messages `find` looks through
GONE_TOKEN = {401, 404}  # an expired or unknown interaction token
BASE_UPLOAD_LIMIT = 10 * 1024 * 1024  # bytes per message in DMs and unboosted guilds


def _delivery_error(exc: Exception) -> DeliveryError:
    if isinstance(exc, discord.HTTPException):
        if exc.status == 429:
            after = getattr(exc.response, "headers", {}).get("Retry-After")
            return DeliveryError(f"rate limited: {exc.text}", after=float(after) if after else None)
        if exc.status in (400, 403, 404):  # bad message, missing permission, deleted thread
            return DeliveryError(f"Discord refused ({exc.status}): {exc.text}", retry=False)
        return DeliveryError(f"Discord error {exc.status}: {exc.text}")
    return DeliveryError(f"Discord unreachable: {exc}")


class DiscordPoster:
    def __init__(self, client: discord.Client, upload_limit: int | None = None) -> None:
        self.client = client
        self.upload_limit = upload_limit

    def limit_for(self, channel_id: int) -> int:
        """Bytes one message may carry: the setting, else the guild's (boost) limit."""
        if self.upload_limit:
            return self.upload_limit
        channel = self.client.get_channel(channel_id)
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else BASE_UPLOAD_LIMIT

    # -- Poster ---------------------------------------------------------------------------

    async def post(self, target: Target, message: OutMessage, nonce: str) -> str:
        channel_id = where_to_post(target.channel_id, target.thread_id)
        files = list(message.files)
        if (preview := preview_file(message.preview)) is not None:
            files.append((preview.filename, preview.data))
        groups = fit_files(files, self.limit_for(channel_id)) or [[]]
        first: str | None = None
        for n, group in enumerate(groups):
            last = n == len(groups) - 1
            text = clip(message.text) if n == 0 and message.text else None
            view = view_of(message.buttons) if last else None
            message_id = await self._send(
                target, channel_id, text, group, view, nonce if n == 0 else f"{nonce}.{n}"
            )
            first = first or message_id
        assert first is not None
        return first

    async def edit(self, target: Target, message_id: str, message: OutMessage) -> None:
        preview = preview_file(message.preview)

        def kwargs() -> dict[str, Any]:  # fresh File objects per attempt (see _send)
            return dict(
                content=clip(message.text),
                attachments=[preview.to_discord()] if preview else [],
                view=view_of(message.buttons),
            )

        try:
            if target.interaction_valid and target.interaction_token:
                try:
                    await self._webhook(target).edit_message(int(message_id), **kwargs())
                    return
                except discord.HTTPException as exc:
                    if exc.status not in GONE_TOKEN:
                        raise
            channel_id = where_to_post(target.channel_id, target.thread_id)
            await self._message(channel_id, int(message_id)).edit(**kwargs())
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise _delivery_error(exc) from exc

    async def find(self, target: Target, nonce: str, message: OutMessage) -> str | None:
        channel_id = where_to_post(target.channel_id, target.thread_id)
        me = self.client.user.id if self.client.user else None
        channel = self.client.get_partial_messageable(channel_id)
        try:
            recent = [m async for m in channel.history(limit=RECENT)]
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise _delivery_error(exc) from exc
        # File names without extensions: fitting the upload limit may re-encode PNG as WebP/JPEG.
        stems = {PurePath(name).stem for name, _ in message.files}
        for sent in recent:
            if me is not None and sent.author.id != me:
                continue
            if sent.nonce is not None and str(sent.nonce) == nonce:
                return str(sent.id)
            got = {PurePath(a.filename).stem for a in sent.attachments}
            if stems and got and got <= stems:  # a follow-up with this job's pictures (no nonce)
                return str(sent.id)
        return None

    async def delete(self, channel_id: int, message_id: int) -> None:
        """Remove a result message ("delete" pressed); already gone is fine."""
        with contextlib.suppress(discord.NotFound):
            await self._message(channel_id, message_id).delete()

    # -- transport ------------------------------------------------------------------------

    def _message(self, channel_id: int, message_id: int) -> discord.PartialMessage:
        return self.client.get_partial_messageable(channel_id).get_partial_message(message_id)

    def _webhook(self, target: Target) -> discord.Webhook:
        app_id = self.client.application_id
        assert app_id is not None and target.interaction_token
        return discord.Webhook.partial(app_id, target.interaction_token, client=self.client)

    async def _send(
        self,
        target: Target,
        channel_id: int,
        text: str | None,
        files: list[OutFile],
        view: discord.ui.View | None,
        nonce: str,
    ) -> str:
        # discord.py closes the File objects after each request: build them per attempt.
        extra: dict[str, Any] = {"view": view} if view is not None else {}  # None is no view
        try:
            if target.interaction_valid and target.interaction_token:
                try:
                    sent = await self._webhook(target).send(
                        text or discord.utils.MISSING,
                        files=[f.to_discord() for f in files],
                        wait=True,
                        **extra,
                    )
                    return str(sent.id)
                except discord.HTTPException as exc:
                    if exc.status not in GONE_TOKEN:
                        raise
                    log.info("interaction token refused (%s); posting to the channel", exc.status)
            posted = await self.client.get_partial_messageable(channel_id).send(
                content=text, files=[f.to_discord() for f in files], nonce=nonce, **extra
            )
            return str(posted.id)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise _delivery_error(exc) from exc
