"""What Slack sends to an app: event callbacks, slash commands, block actions, view submissions.

Shapes follow Slack's documented payloads (the fields bolt and our adapter read, and the
usual companions), for Socket Mode envelopes and signed HTTP requests alike.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from tests.helpers.fake_slack import APP_ID, BOT_USER_ID, SIGNING_SECRET, TEAM_ID, FakeSlack


def event_callback(event: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {
        "token": "legacy",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    }


def slash_command(
    fake: FakeSlack, command: str, text: str, *, user: str, channel: str, trigger_id: str
) -> dict[str, str]:
    return {
        "token": "legacy",
        "team_id": TEAM_ID,
        "team_domain": "fake",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": user.lower(),
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "trigger_id": trigger_id,
        "response_url": f"{fake.base}respond/{trigger_id}",
    }


def block_action(
    fake: FakeSlack, message: dict[str, Any], action_id: str, *, user: str, channel: str, trigger_id: str
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": TEAM_ID},
        "api_app_id": APP_ID,
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
        "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel},
        "trigger_id": trigger_id,
        "channel": {"id": channel},
        "message": message,
        "response_url": f"{fake.base}respond/{trigger_id}",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "b",
                "value": action_id,
                "action_ts": str(time.time()),
            }
        ],
    }


def view_submission(
    view: dict[str, Any], values: dict[str, Any], *, user: str, trigger_id: str
) -> dict[str, Any]:
    """A modal submitted: `values` is {block_id: {action_id: value-object}}."""
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID},
        "api_app_id": APP_ID,
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
        "trigger_id": trigger_id,
        "view": {**view, "state": {"values": values}},
    }


def signed(body: str, *, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack adds to an HTTP request: X-Slack-Signature over v0:timestamp:body."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(secret).generate_signature(timestamp=ts, body=body),
    }


def http_body(kind: str, payload: dict[str, Any]) -> tuple[str, str]:
    """(body, content type) as Slack POSTs it: events as JSON, commands as a form, the rest as payload=."""
    if kind == "events_api":
        return json.dumps(payload), "application/json"
    if kind == "slash_commands":
        return urlencode(payload), "application/x-www-form-urlencoded"
    return urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded"
