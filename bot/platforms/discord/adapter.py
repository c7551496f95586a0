"""Discord: slash commands, mentions, DMs and thread messages in; replies out.

The adapter only converts (see convert.py): an interaction or message becomes a
`ConversationService` call, and its `Reply` becomes a Discord message. Job cards and
images are posted later by delivery through `DiscordPoster`.

Every interaction is deferred before anything else (the 3-second acknowledgement), then
photos are downloaded with the bot's session and handed to the service. `/train` makes a
thread for the training; a mention in a channel makes a thread for the conversation.
Message content: with the privileged message-content intent the bot answers every
message in its threads; without it (DREAMBOT_DISCORD_MESSAGE_CONTENT=false, or when
Discord refuses the intent) it answers mentions and DMs, whose content Discord always sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any, Final

import aiohttp
import discord
from discord import app_commands

from bot.chat.cards import parse_forget_id
from bot.chat.service import ConversationService, Reply, Upload
from bot.platforms.discord import commands as discord_commands
from bot.platforms.discord.commands import ConsentView, HeldTraining, PhotoCheckView
from bot.platforms.discord.convert import (
    clip,
    interaction_origin,
    message_origin,
    place_of,
    thread_name,
    view_of,
    where_to_post,
    without_mention,
)
from bot.platforms.discord.poster import DiscordPoster
from bot.platforms.discord.transport import Endpoints, pointed_at
from bot.platforms.downloads import Attached, DownloadRefused, Source, download_all
from core.logs import announce
from core.names import NameRefused, subject_names
from core.settings import Settings

log = logging.getLogger(__name__)

ALREADY_ACKNOWLEDGED = 40060  # Discord's code: this interaction was answered before
SORRY = "Sorry, something went wrong on my side. Please try again in a minute."
CDN = Source(
    headers={},
    unavailable="I couldn't download “{name}” from Discord; please send it again.",
    failed="I couldn't download “{name}” from Discord; please send it again.",
)
THREAD_ARCHIVE_MINUTES: Final = 1440
ASK_CONSENT = "Press “I confirm — train” below, or run /train again with consent: True."


class _Client(discord.Client):
    def __init__(self, adapter: DiscordAdapter, intents: discord.Intents) -> None:
        super().__init__(intents=intents)
        self.adapter = adapter

    async def setup_hook(self) -> None:
        await self.adapter.on_setup()

    async def on_ready(self) -> None:
        announce(f"discord: connected as {self.user}")

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.on_message(message)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.component:
            await self.adapter.on_button(interaction)


class DiscordAdapter:
    platform = "discord"

    def __init__(self, settings: Settings, service: ConversationService) -> None:
        assert settings.discord_token is not None, "DREAMBOT_DISCORD_TOKEN is not set"
        self.settings = settings
        self.service = service
        self.endpoints = Endpoints(settings.discord_api_base, settings.discord_gateway_url)
        self.message_content = settings.discord_message_content
        self._session: aiohttp.ClientSession | None = None  # attachment downloads
        self.client = self._build_client()
        self.poster = DiscordPoster(self.client, settings.discord_max_upload_bytes)

    def _build_client(self) -> _Client:
        intents = discord.Intents.default()
        intents.message_content = self.message_content
        client = _Client(self, intents)
        self.tree = app_commands.CommandTree(client)
        discord_commands.register(self.tree, self)
        self.tree.on_error = self._command_failed  # type: ignore[method-assign]
        return client

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect until `stop` is set. A refused message-content intent falls back to mentions;
        an unreachable Discord is retried with backoff; a refused token stops only this adapter.
        A configured API base or gateway is set for the whole process while this runs."""
        assert self.settings.discord_token is not None
        token = self.settings.discord_token.get_secret_value()
        try:
            with pointed_at(self.endpoints):
                await self._connect(stop, token)
        finally:
            if self._session is not None:
                await self._session.close()

    async def _connect(self, stop: asyncio.Event, token: str) -> None:
        failures = 0
        while not stop.is_set():
            client = asyncio.create_task(self.client.start(token), name="discord-client")
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({client, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not client.done():
                await self.client.close()
            try:
                await client
                return
            except discord.LoginFailure:
                log.error("Discord refused DREAMBOT_DISCORD_TOKEN; the Discord adapter is off.")
                return
            except discord.PrivilegedIntentsRequired:
                if not self.message_content:
                    raise
                log.warning(
                    "Discord refused the message-content intent; answering mentions and DMs only. "
                    "Enable it in the developer portal (Bot → Privileged Gateway Intents) to chat freely."
                )
                self.message_content = False
            except (OSError, aiohttp.ClientError, discord.HTTPException, discord.GatewayNotFound) as exc:
                failures += 1
                log.warning("Discord unreachable (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(60.0, 2.0**failures))
            await self.client.close()
            self.client = self._build_client()  # a closed client is not reused
            self.poster.client = self.client

    async def on_setup(self) -> None:
        """After login, before the gateway: find the gateway and register the commands."""
        assert self.settings.discord_token is not None
        await self.endpoints.find_gateway(self.settings.discord_token.get_secret_value())
        await self.tree.sync()

    # -- slash commands (called by commands.py) ---------------------------------------

    async def defer(self, interaction: discord.Interaction, *, ephemeral: bool = False) -> bool:
        """Acknowledge at once; False when Discord says it was handled (a redelivery) or expired."""
        try:
            await interaction.response.defer(thinking=True, ephemeral=ephemeral)
            return True
        except discord.HTTPException as exc:
            if exc.code == ALREADY_ACKNOWLEDGED or exc.status == 404:
                log.info("interaction %s not deferred: %s", interaction.id, exc.text)
                return False
            raise

    async def train(
        self,
        interaction: discord.Interaction,
        name: str,
        class_noun: str,
        photos: list[discord.Attachment],
        *,
        consent: bool = False,
        keep_photos: bool = False,
        confirmed: bool = False,
    ) -> None:
        if not await self.defer(interaction):
            return
        try:  # before any download or thread: a name outside the rules goes back at once
            name, class_noun = subject_names(name, class_noun)
        except NameRefused as exc:
            await self.answer(interaction, Reply(str(exc), ephemeral=True))
            return
        uploads = await self._download(interaction, photos)
        if uploads is None:
            return
        thread = await self._training_thread(interaction, name)
        origin = interaction_origin(interaction, thread_id=str(thread.id) if thread else None)
        reply = await self.service.train(
            origin, name, class_noun, uploads, consent=consent, keep_photos=keep_photos, confirmed=confirmed
        )
        if thread is not None and not reply.job_ids:  # refused or a redelivery: no empty thread
            with contextlib.suppress(discord.HTTPException):
                await thread.delete()
        if reply.duplicate:
            return
        held = HeldTraining(name, class_noun, photos, consent, keep_photos)
        if reply.needs_consent:  # this event is spent: confirming is a new one (the button)
            text = f"{reply.text}\n{ASK_CONSENT}"
            view = ConsentView(self, interaction.user.id, held)
            await self.answer(interaction, replace(reply, text=text), view=view)
            return
        if reply.photo_check is not None:  # the coach asks first: "Train anyway" trains (a new event)
            await self.answer(interaction, reply, view=PhotoCheckView(self, interaction.user.id, held))
            return
        text = reply.text + (f"\nFollow along in {thread.mention}." if thread and reply.job_ids else "")
        await self.answer(interaction, replace(reply, text=text))

    async def imagine(self, interaction: discord.Interaction, prompt: str, n: int) -> None:
        if await self.defer(interaction):
            await self.answer(
                interaction, await self.service.imagine(interaction_origin(interaction), prompt, n)
            )

    async def simple(self, interaction: discord.Interaction, what: str, *args: object) -> None:
        """/models, /jobs, /quota, /cancel, /forget: private answers."""
        if not await self.defer(interaction, ephemeral=True):
            return
        origin = interaction_origin(interaction, with_token=False)
        call = {
            "models": self.service.models,
            "jobs": self.service.list_jobs,
            "quota": self.service.quota,
            "cancel": self.service.cancel,
            "forget": self.service.forget,  # answers with a "Forget" button: see on_button
        }[what]
        await self.answer(interaction, await call(origin, *args), private=True)  # type: ignore[operator]

    async def answer(
        self,
        interaction: discord.Interaction,
        reply: Reply,
        *,
        private: bool = False,
        view: discord.ui.View | None = None,
    ) -> None:
        """Replace the "thinking…" placeholder (`private`: it was deferred ephemeral). A private
        answer to a public defer goes as an ephemeral follow-up (visibility is fixed at defer).
        The reply's buttons (or `view`) go with the text."""
        if reply.duplicate:
            return
        text = clip(reply.text or "Done.")
        shown = view if view is not None else view_of(reply.buttons)
        extra: dict[str, Any] = {"view": shown} if shown is not None else {}  # None is no view
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=reply.ephemeral, **extra)
        elif reply.ephemeral and not private:
            await interaction.followup.send(text, ephemeral=True, wait=True, **extra)
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        else:
            await interaction.edit_original_response(content=text, **extra)

    async def _download(
        self, interaction: discord.Interaction, photos: list[discord.Attachment]
    ) -> list[Upload] | None:
        """The photos, or None after telling the person why not (too large, unavailable)."""
        try:
            return await self.fetch(photos)
        except DownloadRefused as exc:
            await self.answer(interaction, Reply(str(exc), ephemeral=True))
            return None

    async def fetch(self, attachments: list[discord.Attachment]) -> list[Upload]:
        """Attachments from the CDN within the upload limits: declared sizes first, then
        each body read in chunks and dropped past a limit (`bot.platforms.downloads`)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        files = [Attached(a.filename, a.url, a.size) for a in attachments]
        return await download_all(self._session, files, CDN)

    async def _training_thread(self, interaction: discord.Interaction, name: str) -> discord.Thread | None:
        """A public thread for the training, unless we are in a DM or a thread already."""
        channel = interaction.channel
        if interaction.guild_id is None or place_of(channel, interaction.channel_id)[1]:
            return None
        parent = channel if isinstance(channel, discord.TextChannel) else None
        if parent is None:
            return None
        return await parent.create_thread(
            name=thread_name(f"🧠 {name}"),
            type=discord.ChannelType.public_thread,
            auto_archive_duration=THREAD_ARCHIVE_MINUTES,
        )

    async def _command_failed(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        log.error("command %s failed", interaction.command and interaction.command.name, exc_info=error)
        with contextlib.suppress(discord.HTTPException):
            await self.answer(interaction, Reply(SORRY, ephemeral=True))

    # -- buttons ---------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction) -> None:
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if not custom_id.startswith("db:"):
            return
        try:
            await interaction.response.defer()  # "deferred update": the message stays as it is
        except discord.HTTPException as exc:
            if exc.code == ALREADY_ACKNOWLEDGED or exc.status == 404:
                return
            raise
        try:
            reply = await self.service.press(interaction_origin(interaction), custom_id)
        except Exception:
            log.exception("button %s failed", custom_id)
            reply = Reply(SORRY, ephemeral=True)
        if reply.duplicate:
            return
        if reply.delete_job_id is not None and interaction.message is not None:
            await self.poster.delete(interaction.message.channel.id, interaction.message.id)
        elif parse_forget_id(custom_id) is not None:  # answered: take the "Forget" button away
            with contextlib.suppress(discord.HTTPException):
                await interaction.edit_original_response(view=None)
        view = view_of(reply.buttons)
        extra: dict[str, Any] = {"view": view} if view is not None else {}  # None is no view
        await interaction.followup.send(clip(reply.text or "Done."), ephemeral=True, **extra)

    # -- messages: mentions, DMs and the bot's threads --------------------------------------

    def _addressed(self, message: discord.Message) -> bool:
        me = self.client.user
        if me is None or message.author.bot or message.author.id == me.id:
            return False
        if message.guild is None or me in message.mentions:
            return True
        channel = message.channel
        mine = isinstance(channel, discord.Thread) and channel.owner_id == me.id
        return mine and self.message_content

    async def on_message(self, message: discord.Message) -> None:
        if not self._addressed(message):
            return
        assert self.client.user is not None
        text = without_mention(message.content, self.client.user.id)
        try:
            try:
                uploads = await self.fetch(list(message.attachments))
            except DownloadRefused as exc:
                await message.reply(str(exc), mention_author=False)
                return
            origin = message_origin(message)
            if message.guild is not None and not origin.thread_id:
                # A mention in a channel starts a thread: the conversation lives there.
                thread = await message.create_thread(name=thread_name(text), auto_archive_duration=1440)
                origin = message_origin(message, thread_id=str(thread.id))
            channel = self.client.get_partial_messageable(where_to_post(origin.channel_id, origin.thread_id))
            async with channel.typing():
                reply = await self.service.chat(origin, text, uploads)
            if not reply.duplicate:
                view = view_of(reply.buttons)
                extra: dict[str, Any] = {"view": view} if view is not None else {}  # None is no view
                await channel.send(clip(reply.text or "…"), **extra)
        except Exception:
            log.exception("answering message %s failed", message.id)
            with contextlib.suppress(discord.HTTPException, aiohttp.ClientError, OSError):
                await message.reply(SORRY, mention_author=False)
