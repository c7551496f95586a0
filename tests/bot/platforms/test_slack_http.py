"""Slack scenarios in HTTP mode: signed requests POSTed to the adapter's /slack/events over real HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from bot.chat import delivery as delivery_module
from core.settings import Settings
from tests.bot.platforms.slack_harness import (
    SlackBot,
    add_slack_user_with_subject,
    eventually,
    finish_sample_job,
    free_port,
    job_rows,
    slack_settings,
)
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.fake_slack import BOT_USER_ID, FakeSlack
from tests.helpers.fake_slack_payloads import (
    block_action,
    event_callback,
    http_body,
    signed,
    slash_command,
)

CHANNEL = "C0HTTP"
USER = "U0BOB"


@pytest.fixture
def http_settings(sqlite_settings: Settings, fake_slack: FakeSlack, fake_llm: FakeLLM) -> Settings:
    return slack_settings(
        sqlite_settings,
        fake_slack,
        fake_llm,
        slack_mode="http",
        slack_http_port=free_port(),
        slack_app_token=None,
    )


async def post(
    settings: Settings, kind: str, payload: dict[str, Any], headers: dict[str, str] | None = None, **sign: Any
) -> httpx.Response:
    body, content_type = http_body(kind, payload)
    url = f"http://127.0.0.1:{settings.slack_http_port}/slack/events"
    async with httpx.AsyncClient() as client:
        return await client.post(
            url,
            content=body,
            headers={"Content-Type": content_type, **signed(body, **sign), **(headers or {})},
        )


@pytest.mark.parametrize(
    "signing",
    [{"secret": "not-the-secret"}, {"timestamp": int(time.time()) - 3600}],
    ids=["wrong secret", "replayed an hour later"],
)
async def test_a_request_without_a_valid_signature_is_refused(
    http_settings: Settings, fake_slack: FakeSlack, signing: dict[str, Any]
) -> None:
    event = event_callback(
        {"type": "app_mention", "user": USER, "text": "hi", "ts": "1.2", "channel": CHANNEL}, "Ev9"
    )
    async with SlackBot(http_settings, fake_slack) as bot:
        refused = await post(http_settings, "events_api", event, **signing)
        unsigned = await httpx.AsyncClient().post(
            f"http://127.0.0.1:{http_settings.slack_http_port}/slack/events", json=event
        )
    assert refused.status_code == 401 and unsigned.status_code == 401
    assert bot.service.handled == [] and fake_slack.calls == []


async def test_retried_event_with_retry_headers_makes_one_job(
    http_settings: Settings, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    subject_id = add_slack_user_with_subject(http_settings, USER)
    fake_llm.call("generate_images", {"prompt": "a dog on the moon", "subject_ids": [subject_id]})
    fake_llm.say("On its way!")
    mention = {
        "type": "app_mention",
        "user": USER,
        "text": f"<@{BOT_USER_ID}> put my dog on the moon",
        "ts": "1699999500.000500",
        "channel": CHANNEL,
    }
    event = event_callback(mention, "Ev0RETRY")
    async with SlackBot(http_settings, fake_slack) as bot:
        statuses = []
        for n in range(3):
            retry = {"X-Slack-Retry-Num": str(n), "X-Slack-Retry-Reason": "http_timeout"} if n else {}
            statuses.append((await post(http_settings, "events_api", event, headers=retry)).status_code)
        await eventually(lambda: len(bot.service.replies("chat")) == 3, "all three deliveries handled")
        await eventually(lambda: fake_slack.methods("chat.postMessage"), "the answer posted")
    assert statuses == [200, 200, 200]
    assert [r.duplicate for r in bot.service.replies("chat")].count(False) == 1
    assert len(job_rows(http_settings)) == 1
    assert [c.args["text"] for c in fake_slack.methods("chat.postMessage")] == ["On its way!"]


async def test_imagine_then_delete_and_quota(
    http_settings: Settings, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery_module, "CARD_EDIT_INTERVAL", 0.0)
    async with SlackBot(http_settings, fake_slack) as bot:
        command = slash_command(
            fake_slack, "/imagine", "a red mug", user=USER, channel=CHANNEL, trigger_id="ti1"
        )
        answer = await post(http_settings, "slash_commands", command)
        assert answer.status_code == 200 and answer.text == ""  # acknowledged, the rest follows
        await eventually(lambda: bot.service.replies("imagine"), "the imagine job")
        await eventually(
            lambda: len(fake_slack.methods("chat.postMessage")) == 2, "headline and answer posted"
        )
        [job] = job_rows(http_settings)
        headline = fake_slack.methods("chat.postMessage")[0]
        assert headline.args["text"] == f"🎨 <@{USER}>: a red mug" and "thread_ts" not in headline.args
        thread = fake_slack.messages[CHANNEL][0]["ts"]

        finish_sample_job(http_settings, job.id, n=1)
        await bot.deliver()
        buttons_msg = fake_slack.thread(CHANNEL, thread)[-1]
        [file_id] = buttons_msg["metadata"]["event_payload"]["files"]
        click = block_action(
            fake_slack, buttons_msg, f"db:d:{job.id}", user=USER, channel=CHANNEL, trigger_id="td1"
        )
        assert (await post(http_settings, "interactive", click)).status_code == 200
        await eventually(lambda: fake_slack.ephemerals, "the delete confirmation")

        quota = slash_command(fake_slack, "/quota", "", user=USER, channel=CHANNEL, trigger_id="tq1")
        assert (await post(http_settings, "slash_commands", quota)).status_code == 200
        await eventually(lambda: fake_slack.methods("respond"), "the /quota answer")

    assert file_id not in fake_slack.files  # the image is gone…
    assert fake_slack.message(CHANNEL, buttons_msg["ts"]) is None  # …and the message with its buttons
    assert fake_slack.ephemerals[-1]["text"] == "Deleted."
    [respond] = fake_slack.methods("respond")
    assert respond.args["response_type"] == "ephemeral" and respond.args["text"].startswith(
        "Today: 4/"
    )  # /imagine asks for 4
