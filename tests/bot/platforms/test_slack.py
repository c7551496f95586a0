"""Slack scenarios in Socket Mode: the real slack-bolt app against the local fake Slack.

Like bolt-python's tests/scenario_tests: feed what Slack would send (here as Socket Mode
envelopes over the fake's websocket) and assert what the fake Web API received, in order.
Jobs are finished in-test with core.jobs (claim / add_image / finish), so no GPU worker runs.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from bot.chat import delivery as delivery_module
from bot.chat.cards import image_buttons
from bot.chat.delivery import card_key, images_key
from bot.platforms.slack.convert import train_modal
from core import jobs
from core.db import session_scope
from core.job_progress import JobPhase, JobProgress
from core.models import Conversation, Job, OutboxItem, Subject, User
from core.settings import Settings
from tests.bot.platforms.slack_harness import (
    SlackBot,
    add_slack_user_with_subject,
    count,
    eventually,
    finish_sample_job,
    job_rows,
    photo,
    slack_settings,
)
from tests.helpers.fake_llm import FakeLLM
from tests.helpers.fake_slack import BOT_USER_ID, FakeSlack
from tests.helpers.fake_slack_payloads import block_action, event_callback, slash_command, view_submission

CHANNEL = "C0GENERAL"
USER = "U0ALICE"


@pytest.fixture(autouse=True)
def edit_cards_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Delivery edits a card at most once a second; the tests run passes back to back.
    monkeypatch.setattr(delivery_module, "CARD_EDIT_INTERVAL", 0.0)


def mention(text: str, ts: str = "1699999000.000100", **extra: Any) -> dict[str, Any]:
    return {
        "type": "app_mention",
        "user": USER,
        "text": f"<@{BOT_USER_ID}> {text}",
        "ts": ts,
        "channel": CHANNEL,
        "event_ts": ts,
        **extra,
    }


def script_moon(llm: FakeLLM, subject_id: int) -> None:
    """The model asks for the picture, then tells the person it is coming."""
    llm.call("generate_images", {"prompt": "a dog on the moon", "subject_ids": [subject_id], "n": 2})
    llm.say("Putting Rex on the moon — two pictures coming up!")


async def test_an_event_delivered_three_times_makes_one_job(
    db_settings: Settings, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    settings = slack_settings(db_settings, fake_slack, fake_llm)
    script_moon(fake_llm, add_slack_user_with_subject(settings, USER))
    event = event_callback(mention("put my dog on the moon"), event_id="Ev0MOON")
    async with SlackBot(settings, fake_slack) as bot:
        # Slack redelivers an event it thinks was not acknowledged: same event_id, new envelope.
        for attempt in range(3):
            await bot.send("events_api", event, retry_attempt=attempt)
        await eventually(lambda: len(bot.service.replies("chat")) == 3, "all three deliveries handled")
        await eventually(lambda: fake_slack.methods("chat.postMessage"), "the answer posted")

    replies = bot.service.replies("chat")
    assert [r.duplicate for r in replies].count(False) == 1
    [job] = job_rows(settings)
    assert job.kind == "sample" and "zwx dog" in job.params["prompt"]
    assert len(fake_llm.requests) == 2  # one agent turn: the tool call and the answer
    posted = fake_slack.methods("chat.postMessage")
    assert [c.args["text"] for c in posted] == ["Putting Rex on the moon — two pictures coming up!"]
    assert posted[0].args["thread_ts"] == "1699999000.000100"
    names = fake_slack.names()
    assert names.index("ack") < names.index("chat.postMessage")  # acknowledged before the work


async def test_mention_to_images_in_the_thread_and_reroll(
    sqlite_settings: Settings, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack, fake_llm)
    script_moon(fake_llm, add_slack_user_with_subject(settings, USER))
    thread = "1699999100.000200"
    async with SlackBot(settings, fake_slack) as bot:
        await bot.send("events_api", event_callback(mention("put my dog on the moon", ts=thread), "Ev1"))
        await eventually(lambda: bot.service.replies("chat"), "the agent's answer")
        await eventually(lambda: fake_slack.methods("chat.postMessage"), "the answer posted")
        [job] = job_rows(settings)
        await bot.deliver()  # the card, queued
        image_ids = finish_sample_job(settings, job.id, n=2)
        await bot.deliver()  # the card edited to done, the images posted

        in_thread = fake_slack.thread(CHANNEL, thread)
        card = next(m for m in in_thread if m["text"].startswith("🎨"))
        assert "done" in card["text"] and card.get("edited")
        shares = [m for m in in_thread if m.get("subtype") == "file_share"]
        assert [len(m["files"]) for m in shares] == [2]  # both images in one message, in the thread
        uploaded = [fake_slack.files[f["id"]].data[:8] for f in shares[0]["files"]]
        assert uploaded == [b"\x89PNG\r\n\x1a\n"] * 2
        buttons_msg = in_thread[-1]
        action_ids = [
            e["action_id"] for b in buttons_msg["blocks"] if b["type"] == "actions" for e in b["elements"]
        ]
        assert action_ids == [b.custom_id for b in image_buttons(job.id, image_ids)]  # V1 U1 V2 U2 🎲 🗑 …
        assert {f"db:r:{job.id}", f"db:v:{image_ids[1]}"} <= set(action_ids)
        names = fake_slack.names()
        complete = names.index("files.completeUploadExternal")
        assert names[complete - 4 : complete] == ["files.getUploadURLExternal"] * 2 + ["upload"] * 2
        assert names[complete + 1] == "chat.postMessage"  # the buttons follow the images

        # A click on reroll: a new job with the same prompt, told to the person who clicked.
        click = block_action(
            fake_slack, buttons_msg, f"db:r:{job.id}", user=USER, channel=CHANNEL, trigger_id="tr1"
        )
        await bot.send("interactive", click)
        await eventually(lambda: bot.service.replies("press"), "the reroll")
        await eventually(lambda: fake_slack.ephemerals, "the reroll confirmation")
    first, reroll = job_rows(settings)
    assert reroll.kind == "sample" and reroll.params["prompt"] == first.params["prompt"]
    assert reroll.conversation_id == first.conversation_id  # its card and images go to the same thread
    assert fake_slack.ephemerals[-1]["text"] == f"On it (job #{reroll.id})."
    # Nothing was downloaded without the bot token, and the upload happened once.
    assert fake_slack.names().count("files.completeUploadExternal") == 1


async def test_train_modal_with_five_photos(sqlite_settings: Settings, fake_slack: FakeSlack) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    async with SlackBot(settings, fake_slack) as bot:
        await bot.send(
            "slash_commands",
            slash_command(fake_slack, "/train", "Rex", user=USER, channel=CHANNEL, trigger_id="t1"),
        )
        await eventually(lambda: fake_slack.views, "the modal")
        view = fake_slack.views[-1]
        file_input = view["blocks"][0]["element"]
        assert file_input["type"] == "file_input" and file_input["max_files"] == 10

        files = [fake_slack.add_user_file(f"rex{i}.jpg", photo(color=(40 * i, 90, 30))) for i in range(5)]
        values = {
            "photos": {"photos": {"type": "file_input", "files": files}},
            "name": {"name": {"type": "plain_text_input", "value": "Rex"}},
            "class_noun": {"class_noun": {"type": "plain_text_input", "value": "dog"}},
        }
        envelope = await bot.send("interactive", view_submission(view, values, user=USER, trigger_id="t2"))
        await eventually(lambda: bot.service.replies("train"), "the training to start")
        await eventually(
            lambda: len(fake_slack.methods("chat.postMessage")) == 2, "headline and answer posted"
        )
        [job] = job_rows(settings)
        assert job.kind == "train"

        await bot.deliver()
        lease = jobs.claim(settings, job.id, "test-worker")
        assert lease is not None
        jobs.report_progress(settings, lease, JobProgress(step=5, total=10, phase=JobPhase.TRAINING))
        await bot.deliver()

    names = fake_slack.names()
    ack = next(i for i, c in enumerate(fake_slack.calls) if c.args.get("envelope_id") == envelope)
    downloads = [i for i, n in enumerate(names) if n == "download"]
    assert len(downloads) == 5 and ack < downloads[0]  # the modal closed before any download
    assert all(c.args["authorized"] for c in fake_slack.methods("download"))
    headline = fake_slack.methods("chat.postMessage")[0]
    assert headline.args["channel"] == CHANNEL and "Rex" in headline.args["text"]
    with session_scope(settings) as s:
        conv = s.get(Conversation, job.conversation_id)
        assert conv is not None
        thread = conv.thread_id
    card_post = next(
        c for c in fake_slack.methods("chat.postMessage") if c.args["text"].startswith("🧠 Training")
    )
    assert card_post.args["thread_ts"] == thread
    assert card_post.args["metadata"]["event_payload"]["nonce"].startswith("db")
    [edit] = fake_slack.methods("chat.update")
    assert "50%" in edit.args["text"] and names.index("chat.update") > fake_slack.calls.index(card_post)


def _three_good_files(fake: FakeSlack) -> list[dict[str, Any]]:
    return [fake.add_user_file(f"ok{i}.jpg", photo(color=(30 * i, 60, 90))) for i in range(3)]


@pytest.mark.parametrize("case", ["two files", "pdf", "corrupt jpeg", "60 MB file"])
async def test_bad_photos_get_a_friendly_answer_and_nothing_queued(
    case: str, sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    if case == "two files":
        files = _three_good_files(fake_slack)[:2]
    elif case == "pdf":
        files = [
            *_three_good_files(fake_slack),
            fake_slack.add_user_file("cv.pdf", b"%PDF-1.7\n" + b"0" * 2000, "application/pdf"),
        ]
    elif case == "corrupt jpeg":
        broken = photo()[:1500]  # a JPEG cut off mid-stream
        files = [*_three_good_files(fake_slack), fake_slack.add_user_file("broken.jpg", broken)]
    else:
        files = [
            *_three_good_files(fake_slack),
            fake_slack.add_user_file("huge.jpg", b"\xff\xd8" + bytes(60_000_000)),
        ]
    view = {**train_modal(CHANNEL), "id": "V0TRAIN"}
    values = {
        "photos": {"photos": {"files": files}},
        "name": {"name": {"value": "Rex"}},
        "class_noun": {"class_noun": {"value": "dog"}},
    }
    async with SlackBot(settings, fake_slack) as bot:
        envelope = await bot.send("interactive", view_submission(view, values, user=USER, trigger_id="t9"))
        if case == "two files":
            [ack] = [c for c in fake_slack.methods("ack") if c.args["envelope_id"] == envelope]
            # Counting is cheap, so the answer goes back into the modal itself.
            assert ack.args["payload"]["response_action"] == "errors"
            assert "at least 3 photos" in ack.args["payload"]["errors"]["photos"]
        else:
            await eventually(lambda: fake_slack.ephemerals, "the friendly answer")
            text = fake_slack.ephemerals[-1]["text"]
            expected = {"pdf": "cv.pdf", "corrupt jpeg": "broken.jpg", "60 MB file": "60 MB"}[case]
            assert expected in text
            assert fake_slack.ephemerals[-1]["user"] == USER
    assert count(settings, Job) == 0 and count(settings, Subject) == 0
    assert "huge.jpg" not in {
        fake_slack.files[c.args["file_id"]].name for c in fake_slack.methods("download")
    }
    # A headline posted for the thread is removed again when nothing will follow in it.
    assert all(not m for m in fake_slack.messages.values())


def slack_conversation(settings: Settings, thread: str) -> tuple[int, int]:
    """A person and a conversation in `thread` (as if they had talked earlier): their ids."""
    with session_scope(settings) as s:
        user = User(platform="slack", platform_user_id=USER, display_name=USER)
        s.add(user)
        s.flush()
        conv = Conversation(platform="slack", channel_id=CHANNEL, thread_id=thread, user_id=user.id)
        s.add(conv)
        s.flush()
        return user.id, conv.id


async def test_restart_finds_a_posting_row_and_does_not_post_again(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    thread = "1699999300.000300"
    user_id, conv_id = slack_conversation(settings, thread)
    found = jobs.submit(
        settings, kind="sample", params={"prompt": "a dog", "n": 1}, owner_id=user_id, conversation_id=conv_id
    )
    lost = jobs.submit(
        settings, kind="sample", params={"prompt": "a cat", "n": 1}, owner_id=user_id, conversation_id=conv_id
    )
    with session_scope(settings) as s:
        rows = [
            OutboxItem(
                conversation_id=conv_id,
                job_id=j.id,
                kind="job_card",
                idempotency_key=card_key(j.id),
                payload={},
                state="posting",
                attempts=1,
            )
            for j in (found, lost)
        ]
        s.add_all(rows)
        s.flush()
        found_row, lost_row = rows[0].id, rows[1].id
    # The bot died after Slack stored the first card but before it wrote down the message id.
    fake_slack.add_message(CHANNEL, ts=thread, text="<@UBOT0001> draw a dog", user=USER)
    stored = fake_slack.add_message(
        CHANNEL,
        thread_ts=thread,
        text="🎨 queued",
        user=BOT_USER_ID,
        metadata={"event_type": "dreambot_outbox", "event_payload": {"nonce": f"db{found_row}"}},
    )

    async with SlackBot(settings, fake_slack) as bot:
        await bot.deliver()

    lookups = fake_slack.methods("conversations.replies")
    assert lookups and all(str(c.args["include_all_metadata"]).lower() in {"true", "1"} for c in lookups)
    posts = fake_slack.methods("chat.postMessage")
    assert len(posts) == 1 and posts[0].args["metadata"]["event_payload"]["nonce"] == f"db{lost_row}"
    with session_scope(settings) as s:
        rows = {r.id: (r.state, r.platform_message_id) for r in s.scalars(select(OutboxItem))}
    reposted = fake_slack.thread(CHANNEL, thread)[-1]
    assert rows == {found_row: ("posted", stored["ts"]), lost_row: ("posted", reposted["ts"])}


async def test_a_stop_between_upload_and_buttons_does_not_upload_the_images_twice(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    thread = "1699999350.000350"
    user_id, conv_id = slack_conversation(settings, thread)
    job = jobs.submit(
        settings, kind="sample", params={"prompt": "a dog", "n": 2}, owner_id=user_id, conversation_id=conv_id
    )
    image_ids = finish_sample_job(settings, job.id, n=2)
    with session_scope(settings) as s:
        s.add(OutboxItem(conversation_id=conv_id, job_id=job.id, kind="job_card", idempotency_key=card_key(job.id),
                         payload={}, state="posted", platform_message_id="1699999350.000400"))  # fmt: skip
        row = OutboxItem(conversation_id=conv_id, job_id=job.id, kind="images", idempotency_key=images_key(job.id),
                         payload={}, state="posting", attempts=1)  # fmt: skip
        s.add(row)
        s.flush()
        row_id = row.id
    # The bot stopped after Slack shared the two images in the thread, before the buttons message.
    fake_slack.add_message(CHANNEL, ts=thread, text="<@UBOT0001> draw a dog", user=USER)
    files = [{"id": f"F0UP{n}", "name": f"dreambot-{job.id}-{n}.png"} for n in (1, 2)]
    fake_slack.add_message(CHANNEL, thread_ts=thread, subtype="file_share", user=BOT_USER_ID, files=files)

    async with SlackBot(settings, fake_slack) as bot:
        await bot.deliver()

    assert fake_slack.methods("files.getUploadURLExternal", "upload", "files.completeUploadExternal") == []
    posts = fake_slack.methods("chat.postMessage")
    assert len(posts) == 1
    assert posts[0].args["metadata"]["event_payload"] == {"nonce": f"db{row_id}", "files": ["F0UP1", "F0UP2"]}
    buttons = [
        e["action_id"] for b in posts[0].args["blocks"] if b["type"] == "actions" for e in b["elements"]
    ]
    assert buttons == [b.custom_id for b in image_buttons(job.id, image_ids)]
    with session_scope(settings) as s:
        got = s.get(OutboxItem, row_id)
        assert got is not None and got.state == "posted"
        assert got.platform_message_id == fake_slack.thread(CHANNEL, thread)[-1]["ts"]


async def test_messages_in_our_thread_go_to_the_agent_with_their_photos(
    sqlite_settings: Settings, fake_slack: FakeSlack, fake_llm: FakeLLM
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack, fake_llm)
    fake_llm.say("Hi! Send me photos of your dog.")
    fake_llm.say("What a good dog.")
    ours, other = "1699999400.000400", "1699999400.000999"
    pic = fake_slack.add_user_file("dog.jpg", photo())

    def message(ts: str, thread: str, text: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": "message",
            "channel_type": "channel",
            "user": USER,
            "text": text,
            "ts": ts,
            "thread_ts": thread,
            "channel": CHANNEL,
            **extra,
        }

    async with SlackBot(settings, fake_slack) as bot:
        await bot.send("events_api", event_callback(mention("hello", ts=ours), "Ev10"))
        await eventually(lambda: bot.service.replies("chat"), "the first answer")
        # Ignored: a thread dreambot is not part of, a bot's message, an edit, and the message
        # event twin of a mention (its app_mention event is the one that counts).
        await bot.send("events_api", event_callback(message("1699999401.1", other, "hi all"), "Ev11"))
        await bot.send(
            "events_api", event_callback(message("1699999401.2", ours, "beep", bot_id="B0OTHER"), "Ev12")
        )
        await bot.send(
            "events_api",
            event_callback(message("1699999401.3", ours, "x", subtype="message_changed"), "Ev13"),
        )
        await bot.send(
            "events_api", event_callback(message("1699999401.4", ours, f"<@{BOT_USER_ID}> hi"), "Ev14")
        )
        # Counted: a plain message in dreambot's thread, with a photo.
        with_photo = message("1699999402.0", ours, "this is Rex", subtype="file_share", files=[pic])
        await bot.send("events_api", event_callback(with_photo, "Ev15"))
        await eventually(lambda: len(bot.service.replies("chat")) == 2, "the answer to the photo")
        await eventually(lambda: len(fake_slack.methods("chat.postMessage")) == 2, "both answers posted")

    assert [o.thread_id for _, o, _ in bot.service.handled] == [ours, ours]
    assert [c.args["file_id"] for c in fake_slack.methods("download")] == [pic["id"]]
    assert len(fake_llm.requests) == 2
    last_user_turn = fake_llm.requests[-1].messages[-1]
    assert any(part.get("type") == "image_url" for part in last_user_turn["content"])
    assert [c.args["text"] for c in fake_slack.methods("chat.postMessage")][-1] == "What a good dog."


async def test_models_jobs_and_cancel_answer_only_the_asker(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    add_slack_user_with_subject(settings, USER, name="Rex")

    def command(name: str, text: str = "") -> dict[str, str]:
        return slash_command(
            fake_slack, name, text, user=USER, channel=CHANNEL, trigger_id=f"t{len(fake_slack.calls)}"
        )

    async with SlackBot(settings, fake_slack) as bot:
        for name, text in [("/models", ""), ("/jobs", ""), ("/cancel", "soon"), ("/cancel", "#999")]:
            n = len(fake_slack.methods("respond"))
            await bot.send("slash_commands", command(name, text))
            await eventually(
                lambda n=n: len(fake_slack.methods("respond")) > n, f"the answer to {name} {text}"
            )
    answers = [c.args for c in fake_slack.methods("respond")]
    assert all(a["response_type"] == "ephemeral" for a in answers)
    assert "Rex (dog) — ready" in answers[0]["text"]
    assert answers[1]["text"] == "You have no recent jobs."
    assert answers[2]["text"].startswith("Which job?")
    assert "isn't one of your pictures" in answers[3]["text"]
    assert fake_slack.methods("chat.postMessage") == []  # nothing public


async def test_slack_errors_are_retried_or_given_up_never_fatal(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    with session_scope(settings) as s:
        user = User(platform="slack", platform_user_id=USER, display_name=USER)
        s.add(user)
        s.flush()
        convs = [
            Conversation(platform="slack", channel_id=c, thread_id="", user_id=user.id) for c in ("C1", "C2")
        ]
        s.add_all(convs)
        s.flush()
        user_id, conv_ids = user.id, [c.id for c in convs]
    for conv_id in conv_ids:
        jobs.submit(
            settings,
            kind="sample",
            params={"prompt": "a dog", "n": 1},
            owner_id=user_id,
            conversation_id=conv_id,
        )
    fake_slack.fail_next("chat.postMessage", "ratelimited", status=429, headers={"Retry-After": "30"})
    fake_slack.fail_next("chat.postMessage", "not_in_channel")
    async with SlackBot(settings, fake_slack) as bot:
        await bot.deliver()
        await bot.deliver()  # the rate-limited row waits its 30 s; the refused one is done with
    with session_scope(settings) as s:
        rows = [(r.state, r.error) for r in s.scalars(select(OutboxItem).order_by(OutboxItem.id))]
    assert rows == [
        ("posting", "slack rate limit (ratelimited)"),
        ("failed", "slack refused: not_in_channel"),
    ]
    assert len(fake_slack.methods("chat.postMessage")) == 2


async def test_forget_asks_with_a_button_and_the_button_forgets(
    sqlite_settings: Settings, fake_slack: FakeSlack
) -> None:
    settings = slack_settings(sqlite_settings, fake_slack)
    add_slack_user_with_subject(settings, USER, name="Rex")
    async with SlackBot(settings, fake_slack) as bot:
        await bot.send(
            "slash_commands",
            slash_command(fake_slack, "/forget", "Rex", user=USER, channel=CHANNEL, trigger_id="tf1"),
        )
        [asked] = await eventually(lambda: fake_slack.methods("respond"), "the question")
        [button] = [e for b in asked.args["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert button["action_id"].startswith("db:f:") and count(settings, Subject) == 1
        ephemeral = {"ts": "1699999600.000600", "blocks": asked.args["blocks"]}
        click = block_action(
            fake_slack, ephemeral, button["action_id"], user=USER, channel=CHANNEL, trigger_id="tf2"
        )
        await bot.send("interactive", click)
        await eventually(lambda: fake_slack.ephemerals, "the confirmation")
    assert count(settings, Subject) == 0
    assert fake_slack.methods("chat.postMessage") == []
