"""Scenarios: the real discord.py bot against the fake Discord, jobs driven in-test.

Each test feeds gateway events (INTERACTION_CREATE, MESSAGE_CREATE) and asserts what the
fake Discord received, in order. Jobs are claimed, advanced and finished with core.jobs,
as a worker would, so no GPU worker is needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

from core import jobs
from core.db import session_scope
from core.job_progress import JobPhase, JobProgress
from core.models import Subject
from core.settings import Settings
from tests.helpers.discord_bot import (
    Bot,
    after,
    all_jobs,
    bot_messages,
    custom_ids,
    discord_settings,
    finish_sample,
    finish_training,
    jpeg,
    running_bot,
    the_thread,
    train_rex,
    wait_until,
)
from tests.helpers.fake_discord import FakeDiscord
from tests.helpers.fake_llm import FakeLLM


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    server = FakeDiscord().start()
    yield server
    server.stop()


@pytest.fixture
def settings(sqlite_settings: Settings, fake: FakeDiscord, fake_llm: FakeLLM) -> Settings:
    return discord_settings(
        sqlite_settings,
        fake,
        llm_base_url=fake_llm.url,
        llm_api_key=SecretStr("sk-test"),
        llm_max_retries=0,
        llm_model="google/gemma-3-27b-it",
    )


@pytest.fixture
async def bot(settings: Settings, fake: FakeDiscord) -> AsyncIterator[Bot]:
    async with running_bot(settings, fake) as running:
        yield running


async def test_train_defers_first_then_thread_then_card_edited_in_place(
    bot: Bot, fake: FakeDiscord, settings: Settings
) -> None:
    alice = fake.new_user("alice")
    inter = await train_rex(fake, alice)
    arrived = next(d for d in fake.dispatched("INTERACTION_CREATE") if d.data["id"] == inter["id"])

    calls = after(fake, arrived)
    assert (
        calls[0].method == "POST"
        and calls[0].path == f"/interactions/{inter['id']}/{inter['token']}/callback"
    )
    assert calls[0].json["type"] == 5  # deferred: "dreambot is thinking…"
    downloads = [r for r in calls if r.path.startswith("/attachments/")]
    made_thread = next(r for r in calls if r.path == f"/channels/{fake.channel_id}/threads")
    assert len(downloads) == 5 and all(calls[0].seq < d.seq < made_thread.seq for d in downloads)

    thread_id = the_thread(fake)
    answer = fake.rest("PATCH", "/messages/@original")[-1].json["content"]
    assert "training has started" in answer and f"<#{thread_id}>" in answer

    (job,) = all_jobs(settings)
    assert job.kind == "train" and job.status == "queued"
    card = await wait_until(lambda: bot_messages(fake, thread_id), what="the job card")
    assert len(card) == 1 and "Training Rex" in card[0]["content"] and "queued" in card[0]["content"]

    lease = jobs.claim(settings, job.id, "test-worker")
    assert lease is not None
    jobs.report_progress(settings, lease, JobProgress(step=37, total=100, phase=JobPhase.TRAINING))
    await wait_until(lambda: "37%" in bot_messages(fake, thread_id)[0]["content"], what="a progress edit")
    jobs.finish(settings, lease)
    await wait_until(lambda: "done" in bot_messages(fake, thread_id)[0]["content"], what="the done edit")

    messages = bot_messages(fake, thread_id)
    assert len(messages) == 1, "the card is one message, edited in place"
    edits = fake.rest("PATCH", rf"^/channels/{thread_id}/messages/{messages[0]['id']}$")
    assert len(edits) >= 2
    assert len(fake.rest("POST", rf"^/channels/{thread_id}/messages$")) == 1


async def test_chat_in_thread_posts_images_with_buttons_and_reroll_queues_again(
    bot: Bot, fake: FakeDiscord, settings: Settings, fake_llm: FakeLLM
) -> None:
    alice = fake.new_user("alice")
    await train_rex(fake, alice)
    thread_id = the_thread(fake)
    subject_id = await finish_training(settings, all_jobs(settings)[0].id)

    fake_llm.call("generate_images", {"prompt": "my dog on the moon", "subject_ids": [subject_id], "n": 2})
    fake_llm.say("Rex is off to the moon! 🚀")
    said = fake.say(thread_id, alice, "put my dog on the moon")  # no mention: it is the bot's thread

    sample = await wait_until(
        lambda: [j for j in all_jobs(settings) if j.kind == "sample"], what="a sample job"
    )
    reply = await wait_until(
        lambda: [m for m in bot_messages(fake, thread_id) if "🚀" in m["content"]], what="the agent's reply"
    )
    assert reply[0]["content"] == "Rex is off to the moon! 🚀"
    assert "my dog on the moon" in fake_llm.requests[0].messages[-1]["content"].__str__()
    assert fake.rest("POST", f"^/channels/{thread_id}/typing$"), "typing shown while the agent thinks"
    assert all(
        r.seq > next(d.seq for d in fake.dispatched("MESSAGE_CREATE") if d.data["id"] == said["id"])
        for r in fake.rest("POST", f"^/channels/{thread_id}/typing$")
    )

    image_ids = finish_sample(settings, sample[0].id, 2)
    posted = await wait_until(  # (the training card may still show its photo strip: a .jpg)
        lambda: [
            m
            for m in bot_messages(fake, thread_id)
            if any(a["filename"].endswith(".png") for a in m["attachments"])
        ],
        what="the images",
    )
    assert len(posted) == 1 and len(posted[0]["attachments"]) == 2
    upload = next(
        r
        for r in fake.rest("POST", f"^/channels/{thread_id}/messages$")
        if r.files and r.files[0].filename.endswith(".png")  # not the training card's strip
    )
    assert [f.filename for f in upload.files] == [
        f"dreambot-{sample[0].id}-1.png",
        f"dreambot-{sample[0].id}-2.png",
    ]
    assert upload.json["nonce"] and upload.json["enforce_nonce"] is True
    ids = custom_ids(posted[0])
    assert f"db:v:{image_ids[0]}" in ids and f"db:u:{image_ids[1]}" in ids and f"db:r:{sample[0].id}" in ids

    press = fake.press(posted[0], f"db:r:{sample[0].id}", alice)
    rerolled = await wait_until(
        lambda: [j for j in all_jobs(settings) if j.kind == "sample"][1:], what="the reroll job"
    )
    assert rerolled[0].params["prompt"] == sample[0].params["prompt"]
    assert rerolled[0].conversation_id == sample[0].conversation_id
    first = after(
        fake, next(d for d in fake.dispatched("INTERACTION_CREATE") if d.data["id"] == press["id"])
    )[0]
    assert first.path.endswith(f"/{press['token']}/callback") and first.json["type"] == 6
    note = await wait_until(lambda: fake.rest("POST", f"/webhooks/.*/{press['token']}$"), what="the note")
    assert f"#{rerolled[0].id}" in note[0].json["content"] and note[0].json["flags"] & 64


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ([("a.jpg", "jpeg"), ("b.jpg", "jpeg")], "at least 3 photos"),
        ([("a.jpg", "jpeg"), ("b.jpg", "jpeg"), ("menu.pdf", "pdf")], "PDF"),
        ([("a.jpg", "jpeg"), ("b.jpg", "jpeg"), ("broken.jpg", "corrupt")], "broken.jpg"),
        ([("a.jpg", "jpeg"), ("b.jpg", "jpeg"), ("huge.jpg", "60mb")], "60 MB"),
    ],
    ids=["two-photos", "pdf", "corrupt-jpeg", "60mb"],
)
async def test_bad_photos_get_a_friendly_reply_and_nothing_is_queued(
    bot: Bot, fake: FakeDiscord, settings: Settings, files: list[tuple[str, str]], expected: str
) -> None:
    alice = fake.new_user("alice")
    good = jpeg()
    blobs = {
        "jpeg": good,
        "pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF",
        "corrupt": good[: len(good) // 3],
        "60mb": good,
    }
    options = {}
    for n, (name, kind) in enumerate(files, start=1):
        declared = 60 * 1000 * 1000 if kind == "60mb" else None
        options[f"photo{n}"] = fake.upload(
            name, blobs[kind], "application/pdf" if kind == "pdf" else "image/jpeg", declared_size=declared
        )
    inter = fake.slash("train", {"name": "Rex", **options}, alice)
    note = await wait_until(lambda: fake.rest("POST", f"/webhooks/.*/{inter['token']}$"), what="the refusal")

    text = note[0].json["content"]
    assert expected in text and note[0].json["flags"] & 64  # only the sender sees it
    assert all_jobs(settings) == []
    assert not [c for c in fake.channels.values() if c["type"] == 11], "no thread left behind"
    if expected == "60 MB":
        assert not fake.rest("GET", "/huge.jpg$"), "a huge file is refused before downloading"


async def test_the_same_interaction_delivered_twice_makes_one_job(
    bot: Bot, fake: FakeDiscord, settings: Settings
) -> None:
    alice = fake.new_user("alice")
    inter = await train_rex(fake, alice)
    fake.dispatch("INTERACTION_CREATE", inter)  # a redelivery of the very same event
    refused = await wait_until(
        lambda: fake.rest("POST", f"/interactions/{inter['id']}/")[1:], what="2nd defer"
    )
    assert refused
    await wait_until(lambda: bot_messages(fake, the_thread(fake)), what="the card")
    assert len(all_jobs(settings)) == 1
    assert len(fake.rest("POST", rf"^/channels/{fake.channel_id}/threads$")) == 1
    assert len(fake.rest("GET", "^/attachments/")) == 5, "the redelivery downloaded nothing"


async def test_a_message_delivered_twice_is_answered_once(
    bot: Bot, fake: FakeDiscord, settings: Settings, fake_llm: FakeLLM
) -> None:
    alice = fake.new_user("alice")
    dm = fake.add_dm(alice)
    fake_llm.say("Hello! Send me 3–10 photos with /train to start.")
    said = fake.say(dm, alice, "hi there")
    await wait_until(lambda: bot_messages(fake, dm), what="the answer")
    fake.dispatch("MESSAGE_CREATE", said)  # gateway replay after a reconnect
    await wait_until(lambda: fake.rest("POST", f"^/channels/{dm}/typing$")[1:], what="the replay handled")
    fake_llm.say("You're welcome!")
    fake.say(dm, alice, "thanks")  # answered after the replay was (not) answered
    await wait_until(lambda: len(bot_messages(fake, dm)) >= 2, what="the next answer")
    assert [m["content"] for m in bot_messages(fake, dm)] == [
        "Hello! Send me 3–10 photos with /train to start.",
        "You're welcome!",
    ]
    assert len(fake_llm.requests) == 2


async def test_a_mention_in_a_channel_starts_a_thread_other_talk_is_ignored(
    bot: Bot, fake: FakeDiscord, settings: Settings, fake_llm: FakeLLM
) -> None:
    alice = fake.new_user("alice")
    fake_llm.say("Hi! I can learn your dog from a few photos.")
    fake.say(fake.channel_id, alice, "what a nice day")  # not for the bot
    said = fake.say(fake.channel_id, alice, "what can you do?", mention=True)
    reply = await wait_until(
        lambda: bot_messages(fake, said["id"]) if said["id"] in fake.channels else None,
        what="the answer in a new thread",
    )
    assert reply[0]["content"] == "Hi! I can learn your dog from a few photos."
    assert fake.rest("POST", rf"^/channels/{fake.channel_id}/messages/{said['id']}/threads$")
    assert len(fake_llm.requests) == 1
    assert "what can you do?" in str(fake_llm.requests[0].messages[-1]["content"])
    assert not bot_messages(fake, fake.channel_id), "nothing posted in the channel itself"


async def test_train_without_photo_options_opens_a_form_for_all_photos_at_once(
    bot: Bot, fake: FakeDiscord, settings: Settings
) -> None:
    alice = fake.new_user("alice")
    opened = fake.slash("train", {"name": "Rex", "class": "dog"}, alice)
    form = await wait_until(lambda: fake.rest("POST", f"/{opened['token']}/callback$"), what="the form")
    assert form[0].json["type"] == 9  # the form is the acknowledgement
    upload = next(c["component"] for c in form[0].json["data"]["components"] if c["component"]["type"] == 19)
    assert upload["max_values"] == 10

    photos = [fake.upload(f"rex{i}.jpg", jpeg(color=(30 * i, 80, 20)), "image/jpeg") for i in range(4)]
    submitted = fake.submit_form(opened, alice, photos)
    await wait_until(lambda: fake.rest("PATCH", f"/{submitted['token']}/messages/@original"), what="answer")
    await wait_until(lambda: bot_messages(fake, the_thread(fake)), what="the card in the new thread")
    calls = after(
        fake, next(d for d in fake.dispatched("INTERACTION_CREATE") if d.data["id"] == submitted["id"])
    )
    assert calls[0].path.endswith(f"/{submitted['token']}/callback") and calls[0].json["type"] == 5
    (job,) = all_jobs(settings)
    assert job.kind == "train"
    with session_scope(settings) as s:
        subject = s.get(Subject, job.subject_id)
        assert subject is not None and subject.name == "Rex" and subject.class_noun == "dog"
