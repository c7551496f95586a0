"""Delivery's Poster for Discord: job cards and result images, posted and edited.

While a conversation's interaction token is valid (15 minutes), messages go out as
interaction follow-ups (they need no channel permission); afterwards, and whenever the
token is refused, as ordinary channel messages. Channel messages carry delivery's nonce
with `enforce_nonce`, so Discord itself returns the first message if the same nonce is
posted again within a few minutes; `find` also looks for the nonce among recent messages.
Webhook follow-ups cannot carry a nonce: `find` recognises an images follow-up by its
files (their names are the job's), so only a card follow-up can be repeated by a crash
between its post and the commit.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import PurePath
from typing import Any

import aiohttp
import discord
from discord.http import handle_message_parameters
from discord.utils import DEFAULT_FILE_SIZE_LIMIT_BYTES

from bot.delivery import DeliveryError, OutMessage, Target
from bot.platforms.discord_convert import (
    OutFile,
    clip,
    fit_files,
    preview_file,
    view_of,
    where_to_post,
)
from bot.platforms.discord_transport import routed_webhooks

log = logging.getLogger(__name__)

RECENT = 50  # how many recent channel messages `find` looks through
GONE_TOKEN = {401, 404}  # an expired or unknown interaction token


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
    def __init__(self, client: discord.Client, api_base: str, upload_limit: int | None = None) -> None:
        self.client = client
        self.api_base = api_base
        self.upload_limit = upload_limit

    def limit_for(self, channel_id: int) -> int:
        """Bytes one message may carry: the setting, else the guild's (boost) limit."""
        if self.upload_limit:
            return self.upload_limit
        channel = self.client.get_channel(channel_id)
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if guild is not None else DEFAULT_FILE_SIZE_LIMIT_BYTES

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
                    with routed_webhooks(self.api_base):
                        await self._webhook(target).edit_message(int(message_id), **kwargs())
                    return
                except discord.HTTPException as exc:
                    if exc.status not in GONE_TOKEN:
                        raise
            channel_id = where_to_post(target.channel_id, target.thread_id)
            with handle_message_parameters(**kwargs()) as params:
                await self.client.http.edit_message(channel_id, int(message_id), params=params)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise _delivery_error(exc) from exc

    async def find(self, target: Target, nonce: str, message: OutMessage) -> str | None:
        channel_id = where_to_post(target.channel_id, target.thread_id)
        me = self.client.user.id if self.client.user else None
        try:
            recent = await self.client.http.logs_from(channel_id, RECENT)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise _delivery_error(exc) from exc
        # File names without extensions: fitting the upload limit may re-encode PNG as WebP/JPEG.
        stems = {PurePath(name).stem for name, _ in message.files}
        for data in recent:
            if me is not None and int(data["author"]["id"]) != me:
                continue
            if str(data.get("nonce")) == nonce:
                return str(data["id"])
            got = {PurePath(a.get("filename", "")).stem for a in data.get("attachments") or []}
            if stems and got and got <= stems:  # a follow-up with this job's pictures (no nonce)
                return str(data["id"])
        return None

    async def delete(self, channel_id: int, message_id: int) -> None:
        """Remove a result message ("delete" pressed); already gone is fine."""
        with contextlib.suppress(discord.NotFound):
            await self.client.http.delete_message(channel_id, message_id)

    # -- transport ------------------------------------------------------------------------

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
        try:
            if target.interaction_valid and target.interaction_token:
                try:
                    extra: dict[str, Any] = {"view": view} if view is not None else {}
                    with routed_webhooks(self.api_base):
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
            kwargs: dict[str, Any] = dict(content=text, files=[f.to_discord() for f in files], view=view)
            with handle_message_parameters(nonce=nonce, **kwargs) as params:
                data = await self.client.http.send_message(channel_id, params=params)
            return str(data["id"])
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise _delivery_error(exc) from exc
