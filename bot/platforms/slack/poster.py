"""Delivery's Slack side: job cards via chat.postMessage / chat.update, images via files_upload_v2.

Every message delivery posts carries message metadata (event_type `dreambot_outbox`,
payload `{nonce}`), so after a restart `find` can look a `posting` row up with
conversations.replies / history instead of posting it twice.

Images are uploaded into the thread first (one files_upload_v2 call, so they arrive as one
message), then a small message with the buttons and the metadata follows: Slack cannot put
buttons or metadata on a file share. When the bot stopped between those two steps, `find`
sees the file share (the file names are the job's) without the metadata message and posts
only the buttons: the images are not uploaded twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot.chat.cards import Button
from bot.chat.delivery import DeliveryError, OutMessage, Target

log = logging.getLogger(__name__)

EVENT_TYPE = "dreambot_outbox"
MAX_BUTTONS_PER_BLOCK = 25  # Slack's limit for one actions block
LOOKUP_PAGES = 10  # conversations.* pages (200 messages each) searched for a nonce
# Errors that another try will not fix: the bot was removed, the thread or message is gone.
PERMANENT = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "message_not_found",
        "thread_not_found",
        "cant_update_message",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "missing_scope",
        "restricted_action",
        "msg_too_long",
        "invalid_blocks",
        "no_text",
    }
)
BUTTONS_TEXT = "Variations (V), upscales (U), a reroll or delete:"


def metadata(nonce: str, **extra: Any) -> dict[str, Any]:
    return {"event_type": EVENT_TYPE, "event_payload": {"nonce": nonce, **extra}}


def blocks_for(text: str, buttons: list[Button]) -> list[dict[str, Any]]:
    """A text section and the buttons as actions blocks; the button's custom_id is the action_id."""
    blocks: list[dict[str, Any]] = []
    if text:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    for start in range(0, len(buttons), MAX_BUTTONS_PER_BLOCK):
        elements = []
        for b in buttons[start : start + MAX_BUTTONS_PER_BLOCK]:
            element: dict[str, Any] = {
                "type": "button",
                "text": {"type": "plain_text", "text": b.label, "emoji": True},
                "action_id": b.custom_id,
                "value": b.custom_id,
            }
            if b.style in {"primary", "danger"}:
                element["style"] = b.style
            elements.append(element)
        blocks.append({"type": "actions", "block_id": f"dreambot-{start}", "elements": elements})
    return blocks


def slack_error(exc: SlackApiError) -> str:
    """The `error` field of Slack's answer ("" when the body was not Slack's JSON)."""
    data = exc.response.data
    return str(data.get("error", "")) if isinstance(data, dict) else ""


def delivery_error(exc: Exception) -> DeliveryError:
    """Slack's answer in delivery's terms: retry later (how much later) or give up."""
    if isinstance(exc, SlackApiError):
        status = exc.response.status_code
        error = slack_error(exc)
        if status == 429 or error == "ratelimited":
            after = float(exc.response.headers.get("Retry-After", exc.response.headers.get("retry-after", 1)))
            return DeliveryError(f"slack rate limit ({error or status})", retry=True, after=after)
        return DeliveryError(f"slack refused: {error or status}", retry=error not in PERMANENT)
    return DeliveryError(f"slack unreachable: {exc}", retry=True)


class SlackPoster:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def post(self, target: Target, message: OutMessage, nonce: str) -> str:
        file_ids: list[str] | None = None
        if message.files:
            try:
                done = await self.client.files_upload_v2(
                    file_uploads=[
                        {"file": data, "filename": name, "title": name} for name, data in message.files
                    ],
                    channel=target.channel_id,
                    thread_ts=target.thread_id or None,
                    initial_comment=message.text or None,
                )
            except (SlackApiError, SlackRequestError, aiohttp.ClientError, TimeoutError) as exc:
                raise delivery_error(exc) from exc
            file_ids = [f["id"] for f in done.get("files") or []]
        return await self._post_message(target, message, nonce, file_ids)

    async def _post_message(
        self, target: Target, message: OutMessage, nonce: str, file_ids: list[str] | None
    ) -> str:
        """The message with text, buttons and the nonce; after images, it points at their files
        (which the Delete button removes) and carries the buttons or a small marker."""
        text, extra = message.text, {}
        if file_ids is not None:
            extra = {"files": file_ids}
            text = BUTTONS_TEXT if message.buttons else "✅"
        try:
            resp = await self.client.chat_postMessage(
                channel=target.channel_id,
                thread_ts=target.thread_id or None,
                text=text or " ",
                blocks=blocks_for(text, message.buttons),
                metadata=metadata(nonce, **extra),
                unfurl_links=False,
            )
        except (SlackApiError, SlackRequestError, aiohttp.ClientError, TimeoutError) as exc:
            raise delivery_error(exc) from exc
        return str(resp["ts"])

    async def edit(self, target: Target, message_id: str, message: OutMessage) -> None:
        try:
            await self.client.chat_update(
                channel=target.channel_id,
                ts=message_id,
                text=message.text or " ",
                blocks=blocks_for(message.text, message.buttons),
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            raise delivery_error(exc) from exc

    async def find(self, target: Target, nonce: str, message: OutMessage) -> str | None:
        """The ts of the message delivery posted with `nonce`, looked up by its metadata; when
        only `message`'s images made it (a stop between the two calls), the rest is posted now."""
        names = {name for name, _ in message.files}
        shared: dict[str, Any] | None = None
        async for msg in self._recent(target):
            meta = msg.get("metadata") or {}
            if (
                meta.get("event_type") == EVENT_TYPE
                and (meta.get("event_payload") or {}).get("nonce") == nonce
            ):
                return str(msg["ts"])
            if names and shared is None and {f.get("name") for f in msg.get("files") or []} == names:
                shared = msg
        if shared is None:
            return None
        log.info("nonce %s: its images are in the thread already; posting only the buttons", nonce)
        return await self._post_message(target, message, nonce, [f["id"] for f in shared["files"]])

    async def _recent(self, target: Target) -> AsyncIterator[dict[str, Any]]:
        """The thread's (or channel's) messages with their metadata, up to LOOKUP_PAGES pages."""
        cursor: str | None = None
        try:
            for _ in range(LOOKUP_PAGES):
                if target.thread_id:
                    resp = await self.client.conversations_replies(
                        channel=target.channel_id,
                        ts=target.thread_id,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                else:
                    resp = await self.client.conversations_history(
                        channel=target.channel_id, include_all_metadata=True, limit=200, cursor=cursor
                    )
                for msg in resp.get("messages") or []:
                    yield msg
                cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    return
        except SlackApiError as exc:
            if slack_error(exc) == "thread_not_found":
                return
            raise delivery_error(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise delivery_error(exc) from exc
        log.warning("looked through the newest %d pages of %s only", LOOKUP_PAGES, target.channel_id)

    async def delete(self, channel: str, ts: str, file_ids: list[str]) -> None:
        """Remove a result message and the images it points at (the Delete button)."""
        for file_id in file_ids:
            try:
                await self.client.files_delete(file=file_id)
            except SlackApiError as exc:
                log.info("could not delete file %s: %s", file_id, slack_error(exc))
        await self.client.chat_delete(channel=channel, ts=ts)
