"""End to end once: a Slack mention → the agent (scripted LLM) → a real `dreambot worker` with the
tiny pipeline and the subject's LoRA → delivery → the images uploaded into the Slack thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.chat import delivery as delivery_module
from core.db import dispose_engines, session_scope
from core.models import User
from tests.bot.platforms.slack_harness import SlackBot, eventually, job_rows, slack_settings
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.fake_slack import BOT_USER_ID, FakeSlack
from tests.helpers.fake_slack_payloads import event_callback
from tests.helpers.lora import make_lora_bytes, make_subject, sample_settings
from tests.helpers.workers import WorkerProcess, wait_job

pytestmark = pytest.mark.slow
CHANNEL, USER, THREAD = "C0E2E", "U0CAROL", "1699999900.000900"


async def test_put_my_dog_on_the_moon_through_a_real_worker(
    tmp_path: Path,
    tiny_model_dir: Path,
    fake_slack: FakeSlack,
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery_module, "CARD_EDIT_INTERVAL", 0.0)
    settings = slack_settings(sample_settings(tmp_path / "var", tiny_model_dir), fake_slack, fake_llm)
    with session_scope(settings) as s:
        user = User(platform="slack", platform_user_id=USER, display_name=USER)
        s.add(user)
        s.flush()
        owner = user.id
    rex = make_subject(settings, owner, make_lora_bytes(tiny_model_dir, seed=3))
    fake_llm.call(
        "generate_images", {"prompt": "on the moon", "subject_ids": [rex], "n": 2, "steps": 2, "seed": 5}
    )
    fake_llm.say("Rex is going to the moon!")
    mention = {
        "type": "app_mention",
        "user": USER,
        "text": f"<@{BOT_USER_ID}> put my dog on the moon",
        "ts": THREAD,
        "channel": CHANNEL,
    }
    worker = WorkerProcess(settings, "sample", tmp_path)
    try:
        async with SlackBot(settings, fake_slack) as bot:
            await bot.send("events_api", event_callback(mention, "Ev0E2E"))
            await eventually(lambda: bot.service.replies("chat"), "the agent")
            await eventually(lambda: fake_slack.methods("chat.postMessage"), "the answer posted")
            [job] = job_rows(settings)
            await bot.deliver()  # the card, while queued
            await asyncio.to_thread(worker.wait_ready)  # the bot's loop keeps serving meanwhile
            done = await eventually(lambda: wait_job(settings, job.id, timeout=180), "the job", timeout=200)
            assert done.status == "succeeded", f"{done.error}\n{worker.log()}"
            await bot.deliver()
    finally:
        worker.stop()
        dispose_engines()

    thread = fake_slack.thread(CHANNEL, THREAD)
    [share] = [m for m in thread if m.get("subtype") == "file_share"]
    pngs = [fake_slack.files[f["id"]].data for f in share["files"]]
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs)
    card = next(m for m in thread if m["text"].startswith("🎨"))
    assert "done" in card["text"] and card.get("edited")
    assert any(b["type"] == "actions" for b in thread[-1]["blocks"])  # the buttons, last
    assert thread.index(share) < len(thread) - 1
