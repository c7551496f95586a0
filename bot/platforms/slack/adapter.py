"""The Slack adapter: slack-bolt `AsyncApp` events and commands in, service calls and replies out.

Socket Mode by default (no public URL needed; the websocket URL comes from
apps.connections.open on `DREAMBOT_SLACK_API_URL`), HTTP mode with
`DREAMBOT_SLACK_MODE=http` (Slack POSTs signed requests to /slack/events). Every listener
acknowledges first and works after (bolt's `process_before_response=False`), so Slack's
3-second budget never waits on a download or the agent. Retried events carry the same
`event_id`, which becomes `Origin.event_id`; the service records it and answers a
redelivery with `Reply(duplicate=True)`, so nothing is done or posted twice.

What runs where:
- /train opens a modal (photos via `file_input`, name, class); its submission downloads
  the photos with the bot token and starts a thread for the training's card and results.
- /imagine likewise starts a thread; /models, /jobs, /cancel, /quota answer ephemerally.
- App mentions, DMs and messages in threads dreambot is part of go to the agent.
- Buttons (block actions whose action_id is the card's custom_id) go to `service.press`.
- When the photo coach has something to say about /train's photos, the answer is a private
  question with "Train anyway" / "Cancel" (`photos:train:<key>`); the downloaded photos
  wait in memory for 15 minutes (like an open modal), and "Train anyway" trains them.
Job cards and images are posted by delivery through `SlackPoster` (bot/platforms/slack/poster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import replace
from typing import Any

import aiohttp
import uvicorn
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import send_async_response
from slack_bolt.adapter.socket_mode.internals import build_headers
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp, AsyncBoltContext, AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.chat.cards import Button
from bot.chat.service import ConversationService, Origin, Reply, Upload
from bot.platforms.slack import photo_check
from bot.platforms.slack.convert import (
    TRAIN_CALLBACK,
    DownloadRefused,
    TrainForm,
    action_origin,
    command_origin,
    download,
    event_origin,
    form_errors,
    strip_mentions,
    train_modal,
    train_values,
)
from bot.platforms.slack.poster import SlackPoster, blocks_for, slack_error
from core.db import session_scope
from core.logs import announce
from core.models import Conversation
from core.settings import Settings, SettingsError

log = logging.getLogger(__name__)

ACKED = "dreambot_acked"  # context key: an asyncio.Event set once Slack has our ack
ACK_WAIT = 5.0  # seconds a listener waits for that (it is milliseconds in practice)
IMAGINE_USAGE = "Tell me what to draw, e.g. `/imagine Rex on the moon, watercolor`."
CANCEL_USAGE = "Which job? e.g. `/cancel 12` (see `/jobs`)."


class SlackAdapter:
    platform = "slack"

    def __init__(
        self, settings: Settings, service: ConversationService, *, client: AsyncWebClient | None = None
    ):
        if settings.slack_bot_token is None:
            raise SettingsError("DREAMBOT_SLACK_BOT_TOKEN is not set")
        self.settings = settings
        self.service = service
        self.token = settings.slack_bot_token.get_secret_value()
        self.http_mode = settings.slack_mode == "http"
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
        if self.http_mode and not secret:
            raise SettingsError("DREAMBOT_SLACK_MODE=http needs DREAMBOT_SLACK_SIGNING_SECRET")
        if not self.http_mode and settings.slack_app_token is None:
            raise SettingsError(
                "Socket Mode needs DREAMBOT_SLACK_APP_TOKEN (xapp-…), or set DREAMBOT_SLACK_MODE=http"
            )
        self.client = client or AsyncWebClient(token=self.token, base_url=settings.slack_api_url)
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret,
            request_verification_enabled=self.http_mode,  # Socket Mode is authenticated by its token
            process_before_response=False,  # ack() is answered at once; the listener goes on after
        )
        self.poster = SlackPoster(self.client)
        self._session: aiohttp.ClientSession | None = None
        self._asked = photo_check.AskedTrainings()  # /train photos waiting for "Train anyway"
        self._register(self.app)

    # -- serving -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            if self.http_mode:
                await self._serve_http(stop)
            else:
                await self._serve_socket(stop)
        finally:
            if self._session is not None:
                await self._session.close()

    async def _serve_socket(self, stop: asyncio.Event) -> None:
        assert self.settings.slack_app_token is not None
        handler = _SocketModeHandler(
            self.app, self.settings.slack_app_token.get_secret_value(), web_client=self.client
        )
        await handler.connect_async()
        announce("slack: connected (Socket Mode)")
        try:
            await stop.wait()
        finally:
            await handler.close_async()

    def http_app(self) -> Starlette:
        """POST /slack/events: Slack's signed requests, verified by bolt with the signing secret."""
        handler = AsyncSlackRequestHandler(self.app)

        async def events(request: Request) -> Response:
            acked = asyncio.Event()
            response = await handler.handle(request, {ACKED: acked})
            response.background = BackgroundTask(acked.set)  # runs once the response is sent
            return response

        return Starlette(routes=[Route("/slack/events", events, methods=["POST"])])

    async def _serve_http(self, stop: asyncio.Event) -> None:
        config = uvicorn.Config(
            self.http_app(),
            host=self.settings.slack_http_host,
            port=self.settings.slack_http_port,
            log_level="warning",
            # uvicorn's own dictConfig would detach its loggers from ours (no log file, and
            # its errors bypass the `dreambot up` console): keep them, as the web server does
            log_config=None,
        )
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve())
        announce(
            f"slack: receiving events on http://{self.settings.slack_http_host}:{self.settings.slack_http_port}/slack/events"
        )
        try:
            await stop.wait()
        finally:
            server.should_exit = True
            await task

    # -- listeners (ack first, then work) ----------------------------------------------------

    def _register(self, app: AsyncApp) -> None:
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.command("/train")(self._on_train)
        app.view(TRAIN_CALLBACK)(self._on_train_submitted)
        app.command("/imagine")(self._on_imagine)
        for name in ("/models", "/jobs", "/cancel", "/quota", "/forget"):
            app.command(name)(self._on_command)
        app.action(re.compile(r"^db:"))(self._on_button)
        app.action(re.compile(rf"^{photo_check.PREFIX}"))(self._on_photo_answer)

    async def _on_mention(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await after_ack(context)
        await self._chat(event_origin(body, event), strip_mentions(event.get("text", "")), event)

    async def _on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await after_ack(context)
        if event.get("subtype") not in (None, "file_share") or event.get("bot_id"):
            return  # edits, joins, other bots (and ourselves)
        if context.bot_user_id and f"<@{context.bot_user_id}>" in event.get("text", ""):
            return  # the app_mention event for the same message handles it
        if event.get("channel_type") == "im":
            await self._chat(event_origin(body, event, in_thread=False), event.get("text", ""), event)
            return
        thread = event.get("thread_ts")
        if thread and await asyncio.to_thread(self._is_our_thread, str(event["channel"]), str(thread)):
            await self._chat(event_origin(body, event), strip_mentions(event.get("text", "")), event)

    async def _chat(self, origin: Origin, text: str, event: dict[str, Any]) -> None:
        try:
            uploads = await download(self._http(), self.token, event.get("files") or [])
        except DownloadRefused as exc:
            await self._say(origin, str(exc), ephemeral=True)
            return
        await self._answer(origin, await self.service.chat(origin, text, uploads))

    async def _on_train(
        self, ack: Any, command: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        await ack()
        await after_ack(context)
        await client.views_open(
            trigger_id=command["trigger_id"], view=train_modal(command["channel_id"], command.get("text", ""))
        )

    async def _on_train_submitted(
        self, ack: Any, body: dict[str, Any], view: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        form = train_values(view)
        if errors := form_errors(form):  # cheap checks go back into the modal itself
            await ack(response_action="errors", errors=errors)
            return
        await ack()
        await after_ack(context)
        user = body["user"]
        origin = Origin(
            platform="slack",
            user_id=user["id"],
            display_name=user.get("username") or user["id"],
            channel_id=form.channel_id or user["id"],
            event_id=f"view:{view['id']}",
        )
        try:
            uploads = await download(self._http(), self.token, form.files)
        except DownloadRefused as exc:
            await self._say(origin, str(exc), ephemeral=True)
            return
        await self._train(origin, form, uploads)

    async def _train(
        self, origin: Origin, form: TrainForm, uploads: list[Upload], confirmed: bool = False
    ) -> None:
        """Train in a new thread; when the photo coach asks first, the question goes to the
        person privately with "Train anyway" / "Cancel" and the photos wait for the answer."""

        async def call(where: Origin) -> Reply:
            reply = await self.service.train(
                where,
                form.name,
                form.class_noun,
                uploads,
                consent=form.consent,
                keep_photos=form.keep_photos,
                confirmed=confirmed,
            )
            if reply.photo_check is None:
                return reply
            return replace(reply, buttons=self._asked.ask(origin, form, uploads))

        headline = f"📸 <@{origin.user_id}> is teaching me *{form.name}* with {len(uploads)} photos."
        await self._in_new_thread(origin, headline, call)

    async def _on_photo_answer(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], respond: Any, context: AsyncBoltContext
    ) -> None:
        """A press under the photo coach's question (see bot/platforms/slack/photo_check.py)."""
        await ack()
        await after_ack(context)
        answer, asked = self._asked.answer(str(action["action_id"]), body["user"]["id"])
        if not answer:
            return  # someone else's press
        if asked is None or answer == "cancel":
            text = photo_check.EXPIRED if asked is None else photo_check.CANCELLED
            await respond(text=text, response_type="ephemeral", replace_original=True)
            return
        await respond(delete_original=True)
        origin = replace(asked.origin, event_id=action_origin(body).event_id)
        await self._train(origin, asked.form, asked.uploads, confirmed=True)

    async def _on_imagine(
        self, ack: Any, command: dict[str, Any], respond: Any, context: AsyncBoltContext
    ) -> None:
        await ack()
        await after_ack(context)
        prompt = command.get("text", "").strip()
        if not prompt:
            await respond(text=IMAGINE_USAGE, response_type="ephemeral")
            return
        headline = f"🎨 <@{command['user_id']}>: {prompt}"
        await self._in_new_thread(
            command_origin(command), headline, lambda o: self.service.imagine(o, prompt)
        )

    async def _on_command(
        self, ack: Any, command: dict[str, Any], respond: Any, context: AsyncBoltContext
    ) -> None:
        await ack()
        await after_ack(context)
        origin = command_origin(command)
        name = command["command"]
        if name == "/cancel":
            arg = command.get("text", "").strip().lstrip("#")
            if not arg.isdigit():
                await respond(text=CANCEL_USAGE, response_type="ephemeral")
                return
            reply = await self.service.cancel(origin, int(arg))
        elif name == "/models":
            reply = await self.service.models(origin)
        elif name == "/jobs":
            reply = await self.service.list_jobs(origin)
        elif name == "/forget":  # answers with a confirmation button, handled by _on_button
            reply = await self.service.forget(origin, command.get("text", "").strip() or None)
        else:
            reply = await self.service.quota(origin)
        if not reply.duplicate and reply.text:
            await respond(
                text=reply.text,
                blocks=blocks_for(reply.text, reply.buttons) if reply.buttons else None,
                response_type="ephemeral",
                replace_original=False,
            )

    async def _on_button(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await ack()
        await after_ack(context)
        origin = action_origin(body)
        reply = await self.service.press(origin, action["action_id"])
        if reply.duplicate:
            return
        if reply.delete_job_id is not None:
            message = body.get("message") or {}
            files = ((message.get("metadata") or {}).get("event_payload") or {}).get("files") or []
            try:
                await self.poster.delete(origin.channel_id, str(message.get("ts")), list(files))
            except SlackApiError as exc:
                log.info("could not delete a result message: %s", slack_error(exc))
        if reply.text:
            await self._say(origin, reply.text, ephemeral=True, buttons=reply.buttons)

    # -- replies -------------------------------------------------------------------------------

    async def _in_new_thread(
        self, origin: Origin, headline: str, call: Callable[[Origin], Awaitable[Reply]]
    ) -> None:
        """Post `headline`, make its thread the conversation, then call the service there.

        The thread has to exist before the call: the conversation record (where delivery
        posts the job card and the images) is keyed by it.
        """
        try:
            resp = await self.client.chat_postMessage(channel=origin.channel_id, text=headline)
        except SlackApiError:  # not in that channel: the person's DM with the app works anywhere
            resp = await self.client.chat_postMessage(channel=origin.user_id, text=headline)
        channel, ts = str(resp["channel"]), str(resp["ts"])
        reply = await call(replace(origin, channel_id=channel, thread_id=ts))
        if reply.duplicate or not reply.job_ids:
            await self.client.chat_delete(channel=channel, ts=ts)  # nothing will follow in it
            if not reply.duplicate:
                await self._say(origin, reply.text, ephemeral=True, buttons=reply.buttons)
            return
        await self._say(replace(origin, channel_id=channel, thread_id=ts), reply.text)

    async def _answer(self, origin: Origin, reply: Reply) -> None:
        if not reply.duplicate and reply.text:
            await self._say(origin, reply.text, ephemeral=reply.ephemeral, buttons=reply.buttons)

    async def _say(
        self, origin: Origin, text: str, *, ephemeral: bool = False, buttons: list[Button] | None = None
    ) -> None:
        thread = origin.thread_id or None
        blocks = blocks_for(text, buttons) if buttons else None
        if ephemeral:
            try:
                await self.client.chat_postEphemeral(
                    channel=origin.channel_id, user=origin.user_id, text=text, thread_ts=thread, blocks=blocks
                )
                return
            except SlackApiError:  # e.g. not in the channel: tell them in their DM instead
                await self.client.chat_postMessage(channel=origin.user_id, text=text, blocks=blocks)
                return
        await self.client.chat_postMessage(
            channel=origin.channel_id, thread_ts=thread, text=text, blocks=blocks
        )

    # -- small helpers -------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        return self._session

    def _is_our_thread(self, channel: str, thread_ts: str) -> bool:
        """A thread dreambot has a conversation in (one it was mentioned in or started)."""
        with session_scope(self.settings) as s:
            found = s.scalar(
                select(Conversation.id).where(
                    Conversation.platform == "slack",
                    Conversation.channel_id == channel,
                    Conversation.thread_id == thread_ts,
                )
            )
        return found is not None


async def after_ack(context: AsyncBoltContext) -> None:
    """Wait until Slack has our acknowledgement, so no work ever goes out before it.

    bolt answers `ack()` from a polling loop while the listener runs on; without this a
    listener's first download could leave before the ack itself.
    """
    acked = context.get(ACKED)
    if isinstance(acked, asyncio.Event):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(acked.wait(), ACK_WAIT)


class _SocketModeHandler(AsyncSocketModeHandler):
    """bolt's Socket Mode handler, plus the `ACKED` signal once the ack went out."""

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        acked = asyncio.Event()
        request = AsyncBoltRequest(mode="socket_mode", body=req.payload, headers=build_headers(req))
        request.context[ACKED] = acked
        try:
            response = await self.app.async_dispatch(request)
            await send_async_response(client, req, response, time.time())
        finally:
            acked.set()


class _QuietServer(uvicorn.Server):
    """A second uvicorn server in the bot process must leave SIGINT/SIGTERM to the main one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
