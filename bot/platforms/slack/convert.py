"""Slack payloads in, service arguments out: origins, the /train modal, file downloads.

Pure conversion helpers for bot/platforms/slack/adapter.py; nothing here posts to Slack.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.chat.service import Origin, Upload
from bot.platforms.downloads import Attached, DownloadRefused, Source, download_all
from core.errors import UserFacingError
from core.names import NameRefused, class_noun, subject_name
from core.subjects import MAX_PHOTOS, check_photo_count

TRAIN_CALLBACK = "dreambot_train"
PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "heic", "heif"]
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


def event_origin(body: dict[str, Any], event: dict[str, Any], *, in_thread: bool = True) -> Origin:
    """An app mention or message event. Replies go into the thread it started or belongs to."""
    thread = event.get("thread_ts") or (event["ts"] if in_thread else "")
    return Origin(
        platform="slack",
        user_id=str(event.get("user", "")),
        display_name=str(event.get("user", "")),
        channel_id=str(event["channel"]),
        thread_id=str(thread),
        event_id=str(body.get("event_id", "")),  # the same on Slack's retries: the service de-duplicates
    )


def command_origin(command: dict[str, Any], thread_id: str = "") -> Origin:
    return Origin(
        platform="slack",
        user_id=command["user_id"],
        display_name=command.get("user_name") or command["user_id"],
        channel_id=command["channel_id"],
        thread_id=thread_id,
        event_id=f"cmd:{command['trigger_id']}",
    )


def action_origin(body: dict[str, Any]) -> Origin:
    """A button under a message: the conversation is that message's thread."""
    message = body.get("message") or {}
    user = body["user"]
    return Origin(
        platform="slack",
        user_id=user["id"],
        display_name=user.get("username") or user.get("name") or user["id"],
        channel_id=(body.get("channel") or {}).get("id") or body["container"]["channel_id"],
        thread_id=str(message.get("thread_ts") or message.get("ts") or ""),
        event_id=f"action:{body['trigger_id']}",
    )


def strip_mentions(text: str) -> str:
    return _MENTION.sub("", text).strip()


def train_modal(channel_id: str, name: str = "") -> dict[str, Any]:
    """The /train form: photos (file_input, up to 10), a name and an optional class noun."""
    name_input: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": "name",
        "max_length": 40,
        "placeholder": {"type": "plain_text", "text": "Rex"},
    }
    if name:
        name_input["initial_value"] = name[:40]
    return {
        "type": "modal",
        "callback_id": TRAIN_CALLBACK,
        "private_metadata": json.dumps({"channel_id": channel_id}),
        "title": {"type": "plain_text", "text": "Teach dreambot"},
        "submit": {"type": "plain_text", "text": "Train"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "photos",
                "label": {"type": "plain_text", "text": "Photos (3–10)"},
                "hint": {"type": "plain_text", "text": "Sharp photos of one subject from different angles."},
                "element": {
                    "type": "file_input",
                    "action_id": "photos",
                    "filetypes": PHOTO_TYPES,
                    "max_files": MAX_PHOTOS,
                },
            },
            {
                "type": "input",
                "block_id": "name",
                "label": {"type": "plain_text", "text": "Name"},
                "element": name_input,
            },
            {
                "type": "input",
                "block_id": "options",
                "optional": True,
                "label": {"type": "plain_text", "text": "Please confirm"},
                "element": {
                    "type": "checkboxes",
                    "action_id": "options",
                    "options": [
                        _option("consent", "I may use these photos (needed for photos of a person)"),
                        _option("keep_photos", "Keep the photos after training (they are deleted otherwise)"),
                    ],
                },
            },
            {
                "type": "input",
                "block_id": "class_noun",
                "optional": True,
                "label": {"type": "plain_text", "text": "What is it? (dog, woman, mug…)"},
                "element": {"type": "plain_text_input", "action_id": "class_noun", "max_length": 40},
            },
        ],
    }


@dataclass(frozen=True)
class TrainForm:
    channel_id: str
    name: str
    class_noun: str
    files: list[dict[str, Any]]
    consent: bool
    keep_photos: bool


def _option(value: str, text: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text}, "value": value}


def train_values(view: dict[str, Any]) -> TrainForm:
    """What a submitted /train modal says."""
    values = view["state"]["values"]
    meta = json.loads(view.get("private_metadata") or "{}")

    def text(block: str) -> str:
        return str((values.get(block, {}).get(block) or {}).get("value") or "").strip()

    files = list((values.get("photos", {}).get("photos") or {}).get("files") or [])
    ticked = {
        o.get("value") for o in (values.get("options", {}).get("options") or {}).get("selected_options") or []
    }
    return TrainForm(
        str(meta.get("channel_id", "")),
        text("name"),
        text("class_noun"),
        files,
        "consent" in ticked,
        "keep_photos" in ticked,
    )


def form_errors(form: TrainForm) -> dict[str, str]:
    """What is wrong with a submitted /train modal, by block, for Slack to show under each
    field (the photo count and the name rules: checks that need no download)."""
    errors = {}
    try:
        check_photo_count(len(form.files))
    except UserFacingError as exc:
        errors["photos"] = str(exc)[:150]
    for block, check in (("name", subject_name), ("class_noun", class_noun)):
        try:
            check(getattr(form, block))
        except NameRefused as exc:
            errors[block] = str(exc)[:150]
    return errors


async def download(session: aiohttp.ClientSession, token: str, files: list[dict[str, Any]]) -> list[Upload]:
    """Fetch shared files with the bot token, within the upload limits (`downloads`)."""
    attached = []
    for f in files:
        name = str(f.get("name") or f.get("title") or "photo")
        url = f.get("url_private_download") or f.get("url_private")
        if not url:
            raise DownloadRefused(f"I couldn't open “{name}”; please attach it again.")
        attached.append(Attached(name, str(url), int(f["size"]) if f.get("size") else None))
    return await download_all(session, attached, _slack_source(token))


def _slack_source(token: str) -> Source:
    return Source(
        headers={"Authorization": f"Bearer {token}"},
        unavailable="I couldn't download “{name}” from Slack (is dreambot in this channel?).",
        failed="I couldn't download “{name}” from Slack; please try again.",
    )
