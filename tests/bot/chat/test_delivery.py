"""Delivery: one card per job edited in place, results posted exactly once, restarts, errors."""

from __future__ import annotations

import base64

from sqlalchemy import select, update

from bot.chat.cards import JobSnapshot, parse_button_id, render_card
from bot.chat.delivery import Delivery, DeliveryError, OutMessage, Target
from core import jobs
from core.db import session_scope
from core.job_progress import JobProgress
from core.job_results import SampleResult, TrainingResult
from core.models import Conversation, OutboxItem
from core.settings import Settings
from core.storage import storage_from_settings
from tests.helpers.photos import png


class RecordingPoster:
    """A platform that records posts and edits, like a fake server's request log."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []  # (verb, message id, text)
        self.messages: dict[str, OutMessage] = {}
        self.nonces: dict[str, str] = {}
        self.fail_next: DeliveryError | None = None

    async def post(self, target: Target, message: OutMessage, nonce: str) -> str:
        if self.fail_next:
            error, self.fail_next = self.fail_next, None
            raise error
        message_id = f"m{len(self.messages) + 1}"
        self.messages[message_id], self.nonces[nonce] = message, message_id
        self.log.append(("post", message_id, message.text))
        return message_id

    async def edit(self, target: Target, message_id: str, message: OutMessage) -> None:
        self.messages[message_id] = message
        self.log.append(("edit", message_id, message.text))

    async def find(self, target: Target, nonce: str, message: OutMessage) -> str | None:
        return self.nonces.get(nonce)


def conversation(settings: Settings) -> int:
    with session_scope(settings) as s:
        conv = Conversation(platform="test", channel_id="C1", thread_id="T1")
        s.add(conv)
        s.flush()
        return conv.id


async def run_passes(delivery: Delivery, n: int = 1) -> None:
    for _ in range(n):
        delivery._edited.clear()  # tests do not wait for the once-a-second edit budget
        delivery._retry_at.clear()
        await delivery.pass_once()


async def test_card_is_edited_in_place_and_images_posted_once(sqlite_settings: Settings) -> None:
    poster = RecordingPoster()
    delivery = Delivery(sqlite_settings, {"test": poster})
    conv = conversation(sqlite_settings)
    job = jobs.submit(
        sqlite_settings, kind="sample", conversation_id=conv, params={"prompt": "zwx dog", "n": 1}
    )
    await run_passes(delivery)
    assert poster.log == [("post", "m1", "🎨 1 image of “zwx dog” — queued #1")]
    lease = jobs.claim(sqlite_settings, job.id, "w")
    assert lease is not None
    preview = base64.b64encode(png(1, 16)).decode()
    jobs.report_progress(sqlite_settings, lease, JobProgress(step=11, total=30, preview=preview))
    await run_passes(delivery, 2)  # the second pass has nothing new: no edit
    assert poster.log[1:] == [("edit", "m1", "🎨 1 image of “zwx dog” — 37%")]
    assert poster.messages["m1"].preview is not None
    key = f"jobs/{job.id}/0.png"
    storage_from_settings(sqlite_settings).put(key, png(2))
    image_id = jobs.add_image(
        sqlite_settings, lease, storage_key=key, seed=3, prompt="p", width=64, height=64
    )
    jobs.finish(sqlite_settings, lease, SampleResult(image_ids=[image_id]))
    await run_passes(delivery, 3)
    verbs = [(verb, mid) for verb, mid, _ in poster.log[2:]]
    assert verbs == [("edit", "m1"), ("post", "m2")]  # card done, then the images, once
    assert poster.log[2][2].endswith("done ✅")
    result = poster.messages["m2"]
    assert result.files[0][1] == png(2)
    actions = [parse_button_id(b.custom_id) for b in result.buttons]
    assert ("variations", image_id) in actions and ("reroll", job.id) in actions


async def test_a_training_posts_its_test_pictures_only_when_it_made_some(sqlite_settings: Settings) -> None:
    poster = RecordingPoster()
    delivery = Delivery(sqlite_settings, {"test": poster})
    conv = conversation(sqlite_settings)
    with_pictures = jobs.submit(sqlite_settings, kind="train", conversation_id=conv)
    without = jobs.submit(sqlite_settings, kind="train", conversation_id=conv)
    image_ids = []
    for job in (with_pictures, without):
        lease = jobs.claim(sqlite_settings, job.id, "w")
        assert lease is not None
        if job is with_pictures:
            for i in range(2):
                key = f"jobs/{job.id}/{i}.png"
                storage_from_settings(sqlite_settings).put(key, png(10 + i))
                image_ids.append(
                    jobs.add_image(
                        sqlite_settings, lease, storage_key=key, seed=i, prompt="p", width=64, height=64
                    )
                )
        jobs.finish(
            sqlite_settings, lease, TrainingResult(image_ids=image_ids if job is with_pictures else [])
        )
    await run_passes(delivery, 3)
    with session_scope(sqlite_settings) as s:
        kinds = sorted(s.execute(select(OutboxItem.job_id, OutboxItem.kind)).tuples())
    assert kinds == [(with_pictures.id, "images"), (with_pictures.id, "job_card"), (without.id, "job_card")]
    posted = [m for m in poster.messages.values() if m.files]
    assert len(posted) == 1 and [f[1] for f in posted[0].files] == [png(10), png(11)]
    assert posted[0].text == "First test pictures with the new model:"
    actions = [parse_button_id(b.custom_id) for b in posted[0].buttons]
    assert ("variations", image_ids[0]) in actions and ("upscale", image_ids[1]) in actions
    assert not any(a is not None and a[0] == "reroll" for a in actions)  # a reroll would not retrain


async def test_restart_mid_post_does_not_post_twice(sqlite_settings: Settings) -> None:
    poster = RecordingPoster()
    conv = conversation(sqlite_settings)
    job = jobs.submit(sqlite_settings, kind="selftest", conversation_id=conv)
    await run_passes(Delivery(sqlite_settings, {"test": poster}))
    # The bot died after the platform accepted the post but before it wrote the id down.
    with session_scope(sqlite_settings) as s:
        s.execute(update(OutboxItem).values(state="posting", platform_message_id=None))
    restarted = Delivery(sqlite_settings, {"test": poster})
    await run_passes(restarted, 2)
    assert [v for v, _, _ in poster.log] == ["post"]
    with session_scope(sqlite_settings) as s:
        row = s.scalar(select(OutboxItem).where(OutboxItem.job_id == job.id))
        assert row is not None and (row.state, row.platform_message_id) == ("posted", "m1")


async def test_platform_errors_are_retried_not_fatal(sqlite_settings: Settings) -> None:
    poster = RecordingPoster()
    poster.fail_next = DeliveryError("429 rate limited", retry=True, after=0)
    conv = conversation(sqlite_settings)
    jobs.submit(sqlite_settings, kind="selftest", conversation_id=conv)
    delivery = Delivery(sqlite_settings, {"test": poster})
    await run_passes(delivery)
    assert poster.log == []
    await run_passes(delivery)
    assert [v for v, _, _ in poster.log] == ["post"]
    poster.fail_next = None


async def test_refused_forever_is_recorded(sqlite_settings: Settings) -> None:
    poster = RecordingPoster()
    poster.fail_next = DeliveryError("403 missing permissions", retry=False)
    conv = conversation(sqlite_settings)
    jobs.submit(sqlite_settings, kind="selftest", conversation_id=conv)
    delivery = Delivery(sqlite_settings, {"test": poster})
    await run_passes(delivery, 3)
    with session_scope(sqlite_settings) as s:
        row = s.scalar(select(OutboxItem))
        assert row is not None and row.state == "failed" and "403" in (row.error or "")
    assert poster.log == []


def test_card_texts() -> None:
    def card(status: str, **kw: object) -> str:
        snap = JobSnapshot(
            1,
            "train",
            status,
            JobProgress.model_validate(kw.get("progress", {})),
            {},
            None,
            kw.get("error"),
            int(kw.get("position", 0)),
            "Rex",
        )
        return render_card(snap).text

    assert card("queued", position=2) == "🧠 Training Rex — queued #2"
    assert (
        card("running", progress={"step": 5, "total": 10, "phase": "training"})
        == "🧠 Training Rex — 50% (training)"
    )
    assert card("running") == "🧠 Training Rex — starting…"
    assert "on the moon" in card("succeeded")
    assert card("failed", error="out of memory") == "🧠 Training Rex — failed: out of memory"


def test_sample_cards_name_subjects_not_tokens() -> None:
    snap = JobSnapshot(2, "sample", "queued", JobProgress(), {"prompt": "a photo of zwx dog, on the moon", "n": 4}, None,
                       None, 1, "Rex", (("zwx", "dog", "Rex"),))  # fmt: skip
    assert render_card(snap).text == "🎨 4 images of “Rex, on the moon” — queued #1"
